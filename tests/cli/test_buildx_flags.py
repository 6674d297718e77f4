"""buildx flags users paste from their pipelines (issue 13): --load, --add-host,
--annotation, --build-context, --ssh, and the context as a tar on stdin."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import tarfile
import textwrap

import pytest
from cli.clitools import imgbuild, write_context
from imagetools import make_busybox_image, require_root_and_runc

from imgbuild.store import Store

pytestmark = pytest.mark.root


@pytest.fixture
def root(store_root):
    require_root_and_runc()
    make_busybox_image(Store(store_root), "busybox:latest")
    return store_root


def manifest_of(root, name: str) -> dict:
    image = Store(root).load_image(name)
    return image.manifest


def test_load_is_accepted_and_the_image_is_in_the_store(root, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo loaded > /loaded\n")
    built = imgbuild(root, "build", "--load", "-q", "-t", "loaded:1", str(context))
    assert built.returncode == 0, built.stderr
    assert Store(root).load_image("loaded:1").config_descriptor.digest == built.stdout.strip()


def test_add_host_reaches_etc_hosts_in_run_and_the_cache_key(root, tmp_path):
    context = write_context(
        tmp_path / "ctx", "FROM busybox\nRUN grep db.internal /etc/hosts\n"
    )
    first = imgbuild(root, "build", "--progress", "plain", "--add-host", "db.internal:10.1.2.3", "-t", "h:1", str(context))
    assert first.returncode == 0, first.stderr
    assert "#1 10.1.2.3\tdb.internal" in first.stderr
    other = imgbuild(root, "build", "--progress", "plain", "--add-host", "db.internal=10.9.9.9", str(context))
    assert other.returncode == 0 and "#1 CACHED" not in other.stderr  # another host line: the step runs
    again = imgbuild(root, "build", "--progress", "plain", "--add-host", "db.internal:10.1.2.3", str(context))
    assert "#1 CACHED" in again.stderr
    for bad in ("db.internal", "db:not-an-ip", "db:host-gateway"):
        refused = imgbuild(root, "build", "--add-host", bad, str(context))
        assert refused.returncode == 2 and "--add-host" in refused.stderr, refused.stderr


def test_annotations_go_on_the_manifest(root, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nLABEL a=b\n")
    built = imgbuild(
        root, "build", "-q", "-t", "ann:1", "--annotation", "org.opencontainers.image.title=app",
        "--annotation", "manifest:com.example.team=infra", str(context),
    )
    assert built.returncode == 0, built.stderr
    assert manifest_of(root, "ann:1")["annotations"] == {
        "org.opencontainers.image.title": "app",
        "com.example.team": "infra",
    }
    plain = imgbuild(root, "build", "-q", str(context))
    assert plain.stdout == built.stdout  # the image ID is the config's: annotations do not change it
    refused = imgbuild(root, "build", "--annotation", "index:k=v", str(context))
    assert refused.returncode == 2 and "only manifest annotations" in refused.stderr


def test_build_context_names_an_image_and_a_directory(root, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "n.txt").write_text("from-the-named-context\n")
    context = write_context(
        tmp_path / "ctx",
        "FROM base\nCOPY --from=files n.txt /n.txt\nRUN cat /n.txt\n",
    )
    built = imgbuild(
        root, "build", "--progress", "plain", "-t", "named:1",
        "--build-context", "base=docker-image://busybox",
        "--build-context", f"files={files}", str(context),
    )
    assert built.returncode == 0, built.stderr
    assert "#2 from-the-named-context" in built.stderr
    # the named directory is keyed by content, as the build context is
    (files / "n.txt").write_text("changed\n")
    rebuilt = imgbuild(
        root, "build", "--progress", "plain", "--build-context", "base=docker-image://busybox",
        "--build-context", f"files={files}", str(context),
    )
    assert "#2 changed" in rebuilt.stderr
    missing = imgbuild(root, "build", "--build-context", f"files={tmp_path / 'nope'}", str(context))
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
    git = imgbuild(root, "build", "--build-context", "files=https://example.com/x.git", str(context))
    assert git.returncode == 2 and "not supported" in git.stderr


def test_from_a_directory_context_is_refused_with_what_to_do(root, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM files\nRUN true\n")
    completed = imgbuild(root, "build", "--build-context", f"files={tmp_path}", str(context))
    assert completed.returncode == 1
    assert "COPY --from=files reads it" in completed.stderr and "Dockerfile:1:" in completed.stderr


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_the_context_as_a_tar_archive_on_stdin(root, tmp_path):
    archive = _tar({
        "Dockerfile": b"FROM busybox\nCOPY hello.txt /\nRUN cat /hello.txt\n",
        "hello.txt": b"hello-from-stdin\n",
        "other.Dockerfile": b"FROM busybox\nRUN echo other-dockerfile\n",
    })
    built = imgbuild(root, "build", "--progress", "plain", "-t", "stdin:1", "-", input=archive)
    assert built.returncode == 0, built.stderr
    assert "hello-from-stdin" in built.stderr
    other = imgbuild(root, "build", "--progress", "plain", "-f", "other.Dockerfile", "-", input=archive)
    assert other.returncode == 0 and "#1 other-dockerfile" in other.stderr
    assert list((root / "tmp").glob("*/stdin-context-*")) == []  # removed after the build


def test_a_dockerfile_on_stdin_builds_with_an_empty_context(root):
    built = imgbuild(root, "build", "--progress", "plain", "-", input=b"FROM busybox\nRUN echo no-context\n")
    assert built.returncode == 0, built.stderr
    assert "#1 no-context" in built.stderr
    copy = imgbuild(root, "build", "-", input=b"FROM busybox\nCOPY x /\n")
    assert copy.returncode == 1 and "x" in copy.stderr


def test_stdin_confines_a_climbing_archive_and_refuses_two_stdins(root):
    """``../outside`` lands inside the context, as Docker's Untar puts it."""
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM busybox\nCOPY outside /outside\nRUN cat /outside\n"),
                           ("../outside", b"confined\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    completed = imgbuild(root, "build", "--progress", "plain", "-", input=evil.getvalue())
    assert completed.returncode == 0, completed.stderr
    assert "#2 confined" in completed.stderr
    assert list((root / "tmp").rglob("outside")) == []  # nothing left beside the context either
    both = imgbuild(root, "build", "-f", "-", "-", input=b"FROM busybox\n")
    assert both.returncode == 2 and "cannot both come from standard input" in both.stderr


# --- --ssh ------------------------------------------------------------------------------------------

# Asks the agent at $SSH_AUTH_SOCK for its identities (SSH2_AGENTC_REQUEST_IDENTITIES)
# and prints how many it holds: a real agent client, built static for busybox.
AGENT_CLIENT = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
int main(void) {
    const char *path = getenv("SSH_AUTH_SOCK");
    if (!path) { puts("no SSH_AUTH_SOCK"); return 2; }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("connect"); return 3; }
    unsigned char request[5] = {0, 0, 0, 1, 11};
    if (write(fd, request, 5) != 5) return 4;
    unsigned char reply[9];
    if (read(fd, reply, 9) < 9 || reply[4] != 12) { puts("not an agent answer"); return 5; }
    printf("agent-identities=%u\n", (reply[5] << 24) | (reply[6] << 16) | (reply[7] << 8) | reply[8]);
    return 0;
}
"""


@pytest.fixture
def agent(tmp_path):
    """A real ssh-agent with one key, on a socket of its own."""
    socket_path = tmp_path / "agent.sock"
    process = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        key = tmp_path / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        for _ in range(100):
            if socket_path.exists():
                break
            subprocess.run(["sleep", "0.05"])
        env = dict(os.environ, SSH_AUTH_SOCK=str(socket_path))
        subprocess.run(["ssh-add", "-q", str(key)], check=True, env=env, capture_output=True)
        yield socket_path
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


@pytest.fixture
def agent_client(tmp_path):
    source = tmp_path / "client.c"
    source.write_text(AGENT_CLIENT)
    binary = tmp_path / "agent-client"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(binary), str(source)], check=True)
    return binary


def test_ssh_forwards_an_agent_socket(root, tmp_path, agent, agent_client):
    context = write_context(
        tmp_path / "ctx",
        textwrap.dedent("""\
            FROM busybox
            COPY agent-client /agent-client
            RUN --mount=type=ssh echo "sock=$SSH_AUTH_SOCK" && /agent-client
            RUN --mount=type=ssh,id=deploy,target=/tmp/agent,required /agent-client
            """),
        {"agent-client": agent_client.read_bytes()},
    )
    os.chmod(context / "agent-client", 0o755)
    env = {"SSH_AUTH_SOCK": str(agent)}
    built = imgbuild(
        root, "build", "--progress", "plain", "--no-cache", "--ssh", "default", "--ssh", f"deploy={agent}",
        str(context), env=env,
    )
    assert built.returncode == 0, built.stderr
    assert "#2 sock=/run/buildkit/ssh_agent.0" in built.stderr
    assert built.stderr.count("agent-identities=1") == 2
    image = Store(root).load_image(built.stderr.split("image ID ")[1].split()[0])
    for layer in image.layers[1:]:  # the socket's mount point never reaches a layer
        with tarfile.open(fileobj=io.BytesIO(Store(root).read_blob(layer.digest)), mode="r:*") as tar:
            assert not [name for name in tar.getnames() if "run/buildkit" in name or "tmp/agent" in name]


def test_ssh_mount_without_ssh_is_skipped_unless_required(root, tmp_path):
    context = write_context(
        tmp_path / "ctx", 'FROM busybox\nRUN --mount=type=ssh echo "sock=[$SSH_AUTH_SOCK]"\n'
    )
    skipped = imgbuild(root, "build", "--progress", "plain", str(context), env={"SSH_AUTH_SOCK": ""})
    assert skipped.returncode == 0, skipped.stderr
    assert "#1 sock=[]" in skipped.stderr
    required = write_context(tmp_path / "req", "FROM busybox\nRUN --mount=type=ssh,required true\n")
    failed = imgbuild(root, "build", str(required))
    assert failed.returncode == 1 and "add --ssh default" in failed.stderr


def test_ssh_refuses_a_key_file_with_what_to_do(root, tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key\n")
    context = write_context(tmp_path / "ctx", "FROM busybox\n")
    completed = imgbuild(root, "build", "--ssh", f"default={key}", str(context))
    assert completed.returncode == 2
    assert "not an SSH agent socket" in completed.stderr and "ssh-add" in completed.stderr
