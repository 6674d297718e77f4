"""imgbuild builds imgbuild: the project's Dockerfile gives an image in which
imgbuild runs and builds, as a privileged container with a volume for its
store (docs/container.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from apps.apptools import PROJECT, Apps, tail
from imagetools import BUSYBOX

import imgbuild
from imgbuild.cli import main
from imgbuild.sandbox import spec

INNER_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox mkdir /out && /bin/busybox echo built inside > /out/msg"]
CMD ["/bin/busybox", "cat", "/out/msg"]
"""
IMAGE = "imgbuild:selftest"


@pytest.fixture(scope="module")
def self_image(apps: Apps) -> str:
    built = apps.build(PROJECT, IMAGE)
    print(f"\nimgbuild's own image: built in {built.seconds:.1f}s")
    return IMAGE


@pytest.fixture
def work(tmp_path) -> Path:
    """A host directory for the container: the inner build's context and its store."""
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(INNER_DOCKERFILE)
    shutil.copy2(BUSYBOX, tmp_path / "ctx" / "busybox")
    (tmp_path / "store").mkdir()
    return tmp_path


def test_the_image_runs_imgbuild(apps: Apps, self_image):
    ran = apps.run(self_image, "imgbuild", "--version", flags=("--network", "none"))
    assert (ran.returncode, ran.stdout) == (0, f"imgbuild {imgbuild.__version__}\n"), ran.stderr
    config = apps.inspect(self_image)["ImageConfig"]["config"]
    assert config["Volumes"] == {"/var/lib/imgbuild": {}}
    assert "IMGBUILD_ROOT=/var/lib/imgbuild" in config["Env"]


def test_the_image_builds_as_a_privileged_container(apps: Apps, self_image, work):
    inner = ("imgbuild", "--root", "/work/store", "build", "--progress", "plain", "-t", "inner:1", "/work/ctx")
    ran = apps.run(self_image, *inner, flags=("--privileged", "--network", "none", "-v", f"{work}:/work"))
    assert ran.returncode == 0, tail(ran)
    assert "steps: 0 cached, 2 run" in ran.stdout + ran.stderr
    # The inner store is an ordinary store: imgbuild on the host runs what was built inside.
    host = apps.imgbuild("--root", str(work / "store"), "run", "--network", "none", "inner:1")
    assert (host.returncode, host.stdout) == (0, "built inside\n"), host.stderr


def test_without_privileges_the_inner_build_cannot_mount(apps: Apps, self_image, work):
    inner = ("imgbuild", "--root", "/work/store", "build", "--progress", "plain", "/work/ctx")
    ran = apps.run(self_image, *inner, flags=("--network", "none", "-v", f"{work}:/work"))
    assert ran.returncode == 1
    assert "cannot mount the overlay" in ran.stderr, tail(ran)


def test_privileged_grants_our_capabilities_and_no_seccomp(apps: Apps, self_image):
    own = _status_field(Path("/proc/self/status").read_text(), "CapBnd")
    script = "grep -E '^(CapEff|Seccomp):' /proc/self/status"
    privileged = apps.run(self_image, "sh", "-c", script, flags=("--privileged", "--network", "none"))
    assert _status_field(privileged.stdout, "CapEff") == own, tail(privileged)
    assert _status_field(privileged.stdout, "Seccomp") == "0"
    default = apps.run(self_image, "sh", "-c", script, flags=("--network", "none"))
    assert _status_field(default.stdout, "CapEff") == "00000000a80425fb", tail(default)  # Docker's default set
    assert _status_field(default.stdout, "Seccomp") == "2"


def _status_field(text: str, name: str) -> str:
    return next(line.split()[1] for line in text.splitlines() if line.startswith(name + ":"))


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ("relative:/work", "both absolute"),
        ("/work", "both absolute"),
        ("/nonexistent-imgbuild-test-dir:/work", "does not exist on this machine"),
        ("/tmp:/work:rx", "both absolute"),
    ],
)
def test_run_refuses_a_bad_volume(apps: Apps, volume, message):
    ran = apps.run("no-such-image:1", flags=("-v", volume))
    assert ran.returncode == 2 and message in ran.stderr, tail(ran)


# --- the narrower set docs/container.md lists, item by item --------------------------------

NEEDS = ("sys_admin", "no_seccomp", "cgroups")


def _narrow_privileges(granted: set[str]):
    """What --privileged turns into: only the ``granted`` items of docs/container.md's list."""

    def make_privileged(config: dict) -> None:
        capabilities = list(spec.DEFAULT_CAPABILITIES)
        capabilities += ["CAP_SYS_ADMIN"] if "sys_admin" in granted else []
        capabilities += ["CAP_NET_ADMIN"] if "net_admin" in granted else []
        for key in ("bounding", "effective", "permitted"):
            config["process"]["capabilities"][key] = capabilities
        if "no_seccomp" in granted:
            del config["linux"]["seccomp"]
        if "cgroups" in granted:
            config["mounts"].append(
                {"destination": "/sys/fs/cgroup", "type": "bind", "source": "/sys/fs/cgroup",
                 "options": ["rbind", "rw", "nosuid", "noexec", "nodev"]}
            )  # fmt: skip

    return make_privileged


@pytest.mark.parametrize(
    ("granted", "inner_network", "failure"),
    [
        (set(NEEDS), "host", None),
        ({"no_seccomp", "cgroups"}, "host", "cannot mount the overlay"),
        ({"sys_admin", "cgroups"}, "host", "cannot mount the overlay"),
        ({"sys_admin", "no_seccomp"}, "host", "no cgroup mount found"),
        (set(NEEDS), "none", "operation not permitted"),
        ({*NEEDS, "net_admin"}, "none", None),
    ],
    ids=["all-needs", "no-sys-admin", "seccomp", "no-cgroups", "network-none", "network-none-net-admin"],
)
def test_the_needs_docs_list_are_enough_and_each_is_needed(
    apps: Apps, self_image, work, monkeypatch, capfd, granted, inner_network, failure
):
    monkeypatch.setattr(spec, "_make_privileged", _narrow_privileges(granted))
    code = main([
        "--root", str(apps.root), "run", "--privileged", "--network", "none", "-v", f"{work}:/work",
        self_image, "imgbuild", "--root", "/work/store", "build", "--progress", "plain",
        "--network", inner_network, "/work/ctx",
    ])  # fmt: skip
    out, err = capfd.readouterr()
    if failure is None:
        assert code == 0 and "steps: 0 cached, 2 run" in out + err, out + err
    else:
        assert code == 1 and failure in out + err, out + err
