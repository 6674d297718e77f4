"""Build secrets leave no trace: not in a layer, the config, the history, the cache
index (index.db), an export, the progress output or anything else under the store.

Each case builds with ``--secret`` through the CLI on a store of its own (busybox
as the base), uses the secret in RUN steps that do not copy it anywhere, then
searches every file under the store root (compressed blobs decompressed), the
outputs written and stdout/stderr, for the value and its base64 and hex forms.
"""

from __future__ import annotations

import base64
import gzip
import os
import uuid
from pathlib import Path

import pytest
import zstandard
from advtools import TALLY, run_cli
from imagetools import make_busybox_image

from imgbuild.store import Store

USE_FILE = "RUN --mount=type=secret,id=s test -s /run/secrets/s && wc -c /run/secrets/s\n"
USE_ENV = "RUN --mount=type=secret,id=s,env=TOKEN sh -c 'test -n \"$TOKEN\" && echo token set'\n"
USE_TARGET = "RUN --mount=type=secret,id=s,target=/tmp/s.txt,required=true sh -c 'grep -c . /tmp/s.txt'\n"
USE_TWICE = USE_FILE + USE_ENV + "RUN echo after\n"

# (id, how the secret is given, Dockerfile body, extra build args)
CASES = [
    ("env-file-mount", "env", USE_FILE, []),
    ("env-env-mount", "env", USE_ENV, []),
    ("src-file-mount", "src", USE_FILE, []),
    ("src-target", "src", USE_TARGET, []),
    ("env-twice-oci-export", "env", USE_TWICE, ["-o", "type=oci,dest={out}/image.tar"]),
    ("src-json-progress", "src", USE_TWICE, ["--progress", "json"]),
    ("env-metadata-iidfile", "env", USE_ENV, ["--metadata-file", "{out}/meta.json", "--iidfile", "{out}/iid"]),
    ("env-local-export", "env", USE_FILE, ["-o", "type=local,dest={out}/local"]),
]


def _secret() -> str:
    return "s3cr3t-" + uuid.uuid4().hex


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode(), secret.upper().encode()]


def _decoded(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError):
            return data
    if data[:4] == b"\x28\xb5\x2f\xfd":
        try:
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except zstandard.ZstdError:
            return data
    return data


def _files_holding(top: Path, forms: list[bytes]) -> list[str]:
    hits = []
    for directory, _, files in os.walk(top):
        for name in files:
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            data = _decoded(path.read_bytes())
            if any(form in data for form in forms):
                hits.append(str(path))
    return hits


def _build(tmp_path: Path, name: str, given: str, body: str, extra: list[str]) -> tuple[Path, Path, str, list[str]]:
    """Build twice (the second from the cache), then history and inspect; returns
    the store root, the output directory, the secret and everything printed."""
    root = tmp_path / "store"
    root.mkdir()
    make_busybox_image(Store(root), "busybox:latest")
    secret = _secret()
    out = tmp_path / "out"
    out.mkdir()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\n" + body)
    env = {}
    if given == "env":
        env["ADV_SECRET"] = secret
        spec = "id=s,env=ADV_SECRET"
    else:
        (tmp_path / "secret.txt").write_text(secret + "\n")
        spec = f"id=s,src={tmp_path / 'secret.txt'}"
    argv = ["build", "-t", f"adv/secret-{name}:1", "--network", "none", "--secret", spec,
            *[arg.format(out=out) for arg in extra], str(ctx)]
    if "--progress" not in argv:
        argv[1:1] = ["--progress", "plain"]
    outputs = []
    for attempt in ("first", "cached"):  # the second build hits the cache: its keys must not hold it either
        ran = run_cli(argv, root, timeout=60, env=env, memory=False)
        assert ran.returncode == 0, f"{attempt} build failed:\n{ran.output[-3000:]}"
        outputs.append(ran.output)
    for verb in (["history", f"adv/secret-{name}:1"], ["inspect", f"adv/secret-{name}:1"]):
        ran = run_cli(verb, root, timeout=30)
        assert ran.returncode == 0, ran.output
        outputs.append(ran.output)
    return root, out, secret, outputs


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_secret_leaves_no_trace(case, tmp_path, sentinel):
    name, given, body, extra = case
    root, out, secret, outputs = _build(tmp_path, name, given, body, extra)
    forms = _forms(secret)
    printed = [n for n, text in enumerate(outputs) if any(form.decode() in text for form in forms)]
    assert not printed, f"the secret was printed (outputs {printed})"
    leaked = _files_holding(root, forms) + _files_holding(out, forms)
    assert not leaked, f"the secret is in {leaked}"
    assert (root / "index.db").exists() or any(root.rglob("index.db")), "no cache index was searched"
    TALLY.mark("contained")


@pytest.mark.control
def test_the_search_finds_a_secret_the_dockerfile_copies(tmp_path, sentinel):
    """The check above can fail: a secret a RUN step copies into the image is found."""
    body = "RUN --mount=type=secret,id=s cp /run/secrets/s /leak\n"
    root, out, secret, _ = _build(tmp_path, "control", "env", body, [])
    assert _files_holding(root, _forms(secret)), "a secret in a layer was not found"
