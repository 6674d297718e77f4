"""The CI examples of docs/ci.md, run here so that the page cannot rot.

Every fenced block under a ``<!-- ci-example: NAME -->`` marker is read from the
markdown: the GitHub Actions workflow, the GitLab CI job and the Kubernetes Job
are parsed as YAML (as the CI systems read them), and the shell they hold (the
``run:`` steps, the ``script:`` lines, the container's command) runs on this
machine with the real imgbuild against the password-protected registry on
127.0.0.1. What is substituted: ``registry.example.com`` by that registry,
``${{ secrets.* }}`` and GitLab's ``CI_*`` variables by test values, the
Kubernetes volumes and ``/tmp`` by temporary directories.

Each example runs twice with an empty store: the first run builds, pushes the
image and the registry cache; the second runs no step (all come from the
registry cache) and pushes the same layers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from imagetools import make_busybox_image, require_root_and_runc

from imgbuild.store import Store

PROJECT = Path(__file__).resolve().parents[2]
DOC = PROJECT / "docs" / "ci.md"
PLACEHOLDER_HOST = "registry.example.com"
MARKER = re.compile(r"<!-- ci-example: (\w+) -->\n```(\w+)\n(.*?)\n```\n", re.DOTALL)
SCRIPT_TIMEOUT = 600


@pytest.fixture(autouse=True)
def _needs_root_and_runc():
    require_root_and_runc()


def doc_examples() -> dict[str, tuple[str, str]]:
    """name -> (language, text) of every marked block in docs/ci.md."""
    return {name: (language, text) for name, language, text in MARKER.findall(DOC.read_text())}


def test_the_page_has_the_four_examples():
    examples = doc_examples()
    assert sorted(examples) == ["github", "gitlab", "kubernetes", "vm"]
    assert [examples[name][0] for name in ("vm", "github", "gitlab", "kubernetes")] == ["sh", "yaml", "yaml", "yaml"]
    for name, (_language, text) in examples.items():
        for flag in ("--cache-from", "--cache-to", "--push", "--metadata-file", "--progress"):
            assert flag in text, f"the {name} example lacks {flag}"


# --- what the examples build against ---------------------------------------------------------


@dataclass
class Setting:
    registry: str  # host:port
    user: str
    password: str
    base: str  # the base image, pushed by skopeo
    work: Path

    def auth_config(self) -> str:
        auth = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return json.dumps({"auths": {self.registry: {"auth": auth}}})


@pytest.fixture(scope="module")
def setting(auth_registry, tmp_path_factory) -> Setting:
    work = tmp_path_factory.mktemp("ci")
    store = Store(work / "base-store")
    make_busybox_image(store, "busybox:latest")
    base = f"{auth_registry.host}/base/busybox:1"
    _skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", f"{auth_registry.username}:{auth_registry.password}",
        f"oci:{store.layout}:busybox:latest", f"docker://{base}",
    )  # fmt: skip
    return Setting(auth_registry.host, auth_registry.username, auth_registry.password, base, work)


def _skopeo(*args: str) -> str:
    assert shutil.which("skopeo"), "skopeo is not installed; run scripts/test.sh"
    result = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"skopeo {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def _context(setting: Setting, directory: Path, run_line: str = "chmod +x /app/selftest && echo built > /app/built") -> Path:
    """The project being built: what the checkout would hold."""
    (directory / "app").mkdir(parents=True)
    (directory / "Dockerfile").write_text(f"FROM {setting.base}\nCOPY app/ /app/\nRUN {run_line}\n")
    (directory / "app" / "selftest").write_text("#!/bin/sh\ntest -f /app/built && echo selftest ok\n")
    return directory


def _base_env(home: Path) -> dict[str, str]:
    """A runner's environment: imgbuild on PATH, CI set, a home of its own."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "CI": "true",
        "LANG": "C.UTF-8",
    }
    return env


def _sh(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", "-e", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
    )


def _ran(completed: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert completed.returncode == 0, f"{what} exited {completed.returncode}:\n{completed.stdout}\n{completed.stderr}"
    return completed


def _substitute_host(text: str, setting: Setting) -> str:
    return text.replace(PLACEHOLDER_HOST, setting.registry)


# --- one runner per example ----------------------------------------------------------------------


@dataclass
class Outcome:
    metadata: dict
    image: str  # the pushed NAME:TAG
    stdout: str
    stderr: str


def run_vm(setting: Setting, work: Path, context: Path, commit: str) -> Outcome:
    _language, script = doc_examples()["vm"]
    env = _base_env(work / "home")
    (work / "home" / ".docker").mkdir()
    (work / "home" / ".docker" / "config.json").write_text(setting.auth_config())  # "credentials are in root's"
    image = f"{setting.registry}/team/vm-{commit[:8]}"
    env.update(REGISTRY=setting.registry, IMAGE=image, TAG="1.0", IMGBUILD_ROOT=str(work / "store"))
    (context / "build-image.sh").write_text(script)
    done = _ran(subprocess.run(
        ["sh", "build-image.sh"], env=env, cwd=context, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
    ), "the VM runner's script")  # fmt: skip
    assert "selftest ok" in done.stdout
    return Outcome(json.loads((context / "metadata.json").read_text()), f"{image}:1.0", done.stdout, done.stderr)


def run_github(setting: Setting, work: Path, context: Path, commit: str) -> Outcome:
    workflow = yaml.safe_load(doc_examples()["github"][1])
    job = workflow["jobs"]["image"]
    assert "--privileged" in job["container"]["options"]
    assert job["env"]["IMGBUILD_ROOT"] in job["container"]["volumes"][0]  # the store is on a volume
    env = _base_env(work / "home")
    secrets = {"REGISTRY_USER": setting.user, "REGISTRY_PASSWORD": setting.password}
    for name, value in job["env"].items():
        value = re.sub(r"\$\{\{\s*secrets\.(\w+)\s*\}\}", lambda match: secrets[match.group(1)], str(value))
        assert "${{" not in value, f"an expression the test does not know: {value}"
        env[name] = _substitute_host(value, setting)
    env["IMAGE"] += f"-{commit[:8]}"  # a repository of this test's own
    env.update(IMGBUILD_ROOT=str(work / "store"), GITHUB_SHA=commit)
    outputs = []
    for step in job["steps"]:
        if "uses" in step:
            if step["uses"].startswith("actions/upload-artifact"):
                assert (context / step["with"]["path"]).is_file()
            continue
        assert PLACEHOLDER_HOST not in step["run"], "a step names the registry instead of using $REGISTRY"
        outputs.append(_ran(_sh(step["run"], env, context), f"step {step['name']!r}"))
    assert "selftest ok" in outputs[-1].stdout
    metadata = json.loads((context / "metadata.json").read_text())
    return Outcome(metadata, f"{env['IMAGE']}:{env['GITHUB_SHA']}", "", outputs[1].stderr)


def _expand(text: str, env: dict[str, str]) -> str:
    """GitLab's expansion of ``$NAME`` and ``${NAME}`` in ``variables:``."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda match: env[match.group(1) or match.group(2)], text)


def run_gitlab(setting: Setting, work: Path, context: Path, commit: str) -> Outcome:
    job = yaml.safe_load(doc_examples()["gitlab"][1])["build-image"]
    env = _base_env(work / "home")
    builds = work / "builds"
    builds.mkdir()
    env.update(
        CI_REGISTRY=setting.registry,
        CI_REGISTRY_IMAGE=f"{setting.registry}/group/gitlab-{commit[:8]}",
        CI_REGISTRY_USER=setting.user,
        CI_REGISTRY_PASSWORD=setting.password,
        CI_COMMIT_SHORT_SHA=commit[:8],
        CI_PROJECT_DIR=str(context),
        CI_BUILDS_DIR=str(builds),
    )
    for name, value in job["variables"].items():
        env[name] = _expand(str(value), env)
    assert not Path(env["IMGBUILD_ROOT"]).is_relative_to(context), "the store must not be in the build context"
    script = "\n".join(job["script"])
    assert PLACEHOLDER_HOST not in script
    done = _ran(_sh(script, env, context), "the GitLab job's script")
    assert "selftest ok" in done.stdout
    for path in job["artifacts"]["paths"]:
        assert (context / path).is_file()
    metadata = json.loads((context / "metadata.json").read_text())
    return Outcome(metadata, f"{env['CI_REGISTRY_IMAGE']}:{env['CI_COMMIT_SHORT_SHA']}", done.stdout, done.stderr)


def run_kubernetes(setting: Setting, work: Path, context: Path, commit: str) -> Outcome:
    job = yaml.safe_load(doc_examples()["kubernetes"][1])
    assert job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["privileged"] is True
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    paths: dict[str, Path] = {"/tmp": work / "tmp"}  # the container's own /tmp
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if mount["mountPath"] == container["workingDir"]:
            paths[mount["mountPath"]] = context  # what the init container cloned
        elif "secret" in volume:
            directory = work / "secret"
            directory.mkdir()
            for item in volume["secret"]["items"]:  # the dockerconfigjson Secret's file
                (directory / item["path"]).write_text(setting.auth_config())
            paths[mount["mountPath"]] = directory
        else:
            assert "emptyDir" in volume
            paths[mount["mountPath"]] = work / mount["name"]
    for directory in paths.values():
        directory.mkdir(exist_ok=True)

    # one pass, longest first: a mapped path (under /tmp itself) is not mapped again
    pattern = re.compile("|".join(re.escape(path) for path in sorted(paths, key=len, reverse=True)) + r"(?![\w.-])")

    def mapped(text: str) -> str:
        return _substitute_host(pattern.sub(lambda match: str(paths[match.group(0)]), text), setting)

    env = _base_env(work / "home")
    for variable in container["env"]:
        env[variable["name"]] = mapped(str(variable["value"]))
    env["IMAGE"] += f"-{commit[:8]}"
    argv = [*container["command"], *(mapped(arg) for arg in container["args"])]
    assert argv[0] == "/bin/sh"
    done = _ran(subprocess.run(
        argv, env=env, cwd=mapped(container["workingDir"]), capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
    ), "the Kubernetes Job's container command")  # fmt: skip
    events = [json.loads(line) for line in done.stderr.splitlines()]  # --progress json: every line
    assert events[-1]["event"] == "build_finished"
    metadata = json.loads(done.stdout)  # the metadata the job prints at the end
    return Outcome(metadata, f"{env['IMAGE']}:{env['TAG']}", done.stdout, done.stderr)


RUNNERS = {"vm": run_vm, "github": run_github, "gitlab": run_gitlab, "kubernetes": run_kubernetes}


# --- checks -------------------------------------------------------------------------------------


def _registry_manifest(setting: Setting, reference: str) -> bytes:
    return _skopeo(
        "inspect", "--raw", "--tls-verify=false", "--creds", f"{setting.user}:{setting.password}",
        f"docker://{reference}",
    ).encode()  # fmt: skip


def _check_pushed(setting: Setting, outcome: Outcome) -> dict:
    """The metadata says what the registry now serves; returns the pushed manifest."""
    raw = _registry_manifest(setting, outcome.image)
    manifest = json.loads(raw)
    metadata = outcome.metadata
    assert metadata["containerimage.digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert metadata["containerimage.descriptor"]["digest"] == metadata["containerimage.digest"]
    assert metadata["imgbuild.tags"] == [outcome.image]
    assert metadata["image.name"] == outcome.image
    blobs = [manifest["config"], *manifest["layers"]]
    assert metadata["imgbuild.image.size"] == len(raw) + sum(blob["size"] for blob in blobs)
    assert metadata["containerimage.config.digest"] == manifest["config"]["digest"]
    repository = outcome.image.rsplit(":", 1)[0]
    _registry_manifest(setting, f"{repository}:buildcache")  # the registry cache was pushed too
    return manifest


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_example_builds_pushes_and_a_fresh_runner_hits_the_registry_cache(name, setting, tmp_path):
    commit = hashlib.sha1(uuid.uuid4().bytes).hexdigest()  # the commit both pipelines build
    first_work, second_work = tmp_path / "first", tmp_path / "second"
    first_work.mkdir()
    second_work.mkdir()
    first = RUNNERS[name](setting, first_work, _context(setting, first_work / "checkout"), commit)
    manifest = _check_pushed(setting, first)
    assert (first.metadata["imgbuild.steps.run"], first.metadata["imgbuild.steps.cached"]) == (2, 0)

    # The next pipeline of the same commit on a new runner: an empty store.
    second = RUNNERS[name](setting, second_work, _context(setting, second_work / "checkout"), commit)
    assert (second.metadata["imgbuild.steps.run"], second.metadata["imgbuild.steps.cached"]) == (0, 2)
    again = _check_pushed(setting, second)
    assert again["layers"] == manifest["layers"]


def _github_step(name: str) -> str:
    job = yaml.safe_load(doc_examples()["github"][1])["jobs"]["image"]
    return next(step["run"] for step in job["steps"] if step.get("name") == name)


@pytest.mark.parametrize(
    ("run_line", "code", "says"),
    [
        ("echo about to fail; exit 3", 1, "exited with code 3"),  # a failing RUN: the build failed
        ("--bogus-flag=1 true", 2, "--bogus-flag"),  # a bad Dockerfile: nothing was built
    ],
)
def test_the_build_step_exits_with_the_documented_code(setting, tmp_path, run_line, code, says):
    """docs/ci.md, "Exit codes": what the pipeline sees when the build step fails."""
    context = _context(setting, tmp_path / "checkout", run_line=run_line)
    env = _base_env(tmp_path / "home")
    (tmp_path / "home" / ".docker").mkdir()
    (tmp_path / "home" / ".docker" / "config.json").write_text(setting.auth_config())
    env.update(
        REGISTRY=setting.registry, IMAGE=f"{setting.registry}/team/failing", GITHUB_SHA="f" * 40,
        IMGBUILD_ROOT=str(tmp_path / "store"),
    )  # fmt: skip
    failed = _sh(_github_step("Build and push"), env, context)
    assert failed.returncode == code, failed.stderr
    assert says in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (context / "metadata.json").exists()  # written only for a build that succeeded
