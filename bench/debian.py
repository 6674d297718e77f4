"""The Debian bookworm base of the Python, Node and C workloads, made here.

``debootstrap --variant=minbase bookworm`` makes the root filesystem (about
20 s with Debian's mirror); its tar is cached between benchmark runs in
/var/tmp/imgbuild-bench-cache (``--debian-cache``), named by a hash of
everything that decides its content. Each run unpacks the tar, adds what
Docker's official Debian images add (debuerreotype's apt and dpkg settings)
and the host's CA certificates, and imports it with ``imgbuild import``; the
result is saved as OCI and docker archives and loaded into every tool like
busybox:local.

The recipe (what debootstrap makes, what is removed, the tar's options, the
cache's names, the image settings) is the tests' too: tests/debiantools.py
and tests/apps/conftest.py take it from here, with their own cache and
their own way of failing (``cached_rootfs_tar``'s ``run``).

The CA certificates: PyPI and npm are reached through a TLS-intercepting
proxy here, whose CA the host trusts in /usr/local/share/ca-certificates.
The base holds them in the same place, so the examples' ``apt-get install
ca-certificates`` (which runs update-ca-certificates) makes pip and npm trust
them, the same way for every builder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tools import BenchError, mounts_under, run_checked

SUITE = "bookworm"
VARIANT = "minbase"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What an image of Debian leaves out of a debootstrap tree (as the official
# images' debuerreotype does): device nodes, the host's name and resolver,
# apt's downloaded package lists and caches.
REMOVED = (
    "dev/*", "etc/hostname", "etc/resolv.conf", "var/lib/apt/lists/*",
    "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/log/bootstrap.log",
)  # fmt: skip
TAR_OPTIONS = ("--numeric-owner", "--xattrs")
# What Docker's official Debian images add to the tree: no .deb files or
# package caches kept after apt runs, no translations fetched, dpkg without fsync.
IMAGE_CONFIG = {
    "etc/apt/apt.conf.d/docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    ),
    "etc/apt/apt.conf.d/docker-no-languages": 'Acquire::Languages "none";\n',
    "etc/dpkg/dpkg.cfg.d/docker-apt-speedup": "# a build that loses power is run again\nforce-unsafe-io\n",
}

# Runs a command of the recipe; raises the caller's own error if it fails.
Runner = Callable[[list[str]], None]


def cache_key() -> str:
    """Everything that decides the tree's content, hashed: the cached tar's name."""
    recipe = {"suite": SUITE, "variant": VARIANT, "removed": REMOVED, "tar": " ".join(TAR_OPTIONS)}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def cached_name() -> str:
    return f"debootstrap-{SUITE}-{VARIANT}-{cache_key()}.tar"


def rootfs_tar(cache_dir: Path, log: Path) -> Path:
    """The benchmark's debootstrap tree as a tar: cached, or made now."""
    if shutil.which("debootstrap") is None:
        raise BenchError("debootstrap is missing: apt-get install debootstrap")
    if not (cache_dir / cached_name()).exists():
        print(f"running debootstrap --variant={VARIANT} {SUITE} (cached in {cache_dir})", flush=True)
    return cached_rootfs_tar(cache_dir, lambda argv: run_checked(argv, log))


def cached_rootfs_tar(cache_dir: Path, run: Runner) -> Path:
    """The tar of ``debootstrap --variant=minbase bookworm`` from ``cache_dir``,
    or made now (a lock keeps two runs from both making it)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / cached_name()
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cached.exists():
            make_rootfs_tar(cached, run)
    return cached


def make_rootfs_tar(destination: Path, run: Runner) -> None:
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=destination.parent))
    rootfs = work / "rootfs"
    try:
        run(["debootstrap", f"--variant={VARIANT}", SUITE, str(rootfs)])
        for pattern in REMOVED:
            for path in rootfs.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        partial = work / "rootfs.tar"
        run(["tar", *TAR_OPTIONS, "-C", str(rootfs), "-cf", str(partial), "."])
        os.replace(partial, destination)
    finally:
        # debootstrap mounts /proc and /sys in the tree while it works; a failed
        # run can leave them. Never delete through a mount point.
        for point in mounts_under(work):
            subprocess.run(["umount", point], capture_output=True)
        if not mounts_under(work):
            shutil.rmtree(work)


def unpack(tar: Path, tree: Path, run: Runner) -> None:
    """The cached tar as a tree, with what Docker's official Debian images add."""
    tree.mkdir()
    run(["tar", *TAR_OPTIONS, "-xf", str(tar), "-C", str(tree)])
    for name, text in IMAGE_CONFIG.items():
        (tree / name).write_text(text)
        os.chmod(tree / name, 0o644)


def host_ca_certs() -> list[Path]:
    """The CAs the host trusts beyond Debian's (the proxy's on our machines)."""
    if not HOST_CA_DIR.is_dir():
        return []
    return sorted(p for p in HOST_CA_DIR.glob("*.crt") if p.is_file() and not p.is_symlink())


def prepare_tree(tar: Path, tree: Path, log: Path) -> list[str]:
    """Unpack the cached tar into tree as ``unpack`` does, and add the host's CAs.

    Returns the names of the CA certificates added.
    """
    unpack(tar, tree, lambda argv: run_checked(argv, log))
    ca_dir = tree / "usr" / "local" / "share" / "ca-certificates"
    ca_dir.mkdir(parents=True, exist_ok=True)
    added = []
    for cert in host_ca_certs():
        shutil.copyfile(cert, ca_dir / cert.name)
        os.chmod(ca_dir / cert.name, 0o644)
        added.append(cert.name)
    return added


def import_arguments(tree: Path, image: str) -> list[str]:
    """`imgbuild import` arguments that make the base from tree (gzip, as a pulled image has)."""
    return [
        "import", "-q", "-m", f"debootstrap --variant={VARIANT} {SUITE}",
        "--change", f"ENV PATH={DEBIAN_PATH}", "--change", 'CMD ["bash"]', str(tree), image,
    ]  # fmt: skip
