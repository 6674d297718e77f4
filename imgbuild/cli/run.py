"""``imgbuild run [OPTIONS] IMAGE [CMD...]``: run an image once, attached, as ``docker run --rm``.

The container is always removed when the command ends (``--rm`` is accepted
for scripts written for Docker). ``-i`` gives the command our stdin (else it
reads /dev/null), ``-t`` a pseudo-terminal (runc's console socket; see
imgbuild.sandbox.console). The exit code is the command's; 127 when the
command is not in the image, 126 when it cannot be executed.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser) -> None:
    parser.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="set an environment variable")
    parser.add_argument(
        "--env-file", action="append", default=[], metavar="FILE",
        help="read KEY=VALUE lines from FILE (Docker's format; -e wins over it)",
    )
    parser.add_argument("-i", "--interactive", action="store_true", help="give the command this stdin")
    parser.add_argument("-t", "--tty", action="store_true", help="give the command a pseudo-terminal")
    parser.add_argument("--rm", action="store_true", help="accepted for docker run scripts: the container is always removed")
    parser.add_argument("--network", default="host", choices=("host", "none"), help="network (default host)")
    parser.add_argument("-u", "--user", help="user[:group] to run as (default: the image's USER)")
    parser.add_argument("-w", "--workdir", help="working directory (default: the image's WORKDIR)")
    parser.add_argument("--entrypoint", help="override the image's ENTRYPOINT and drop its CMD ('' clears the ENTRYPOINT)")
    parser.add_argument("--runtime", default=None, help="OCI runtime: runc (default) or crun")
    parser.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CONTAINER[:ro]", help="bind-mount a host path (absolute) into the container")
    parser.add_argument("--privileged", action="store_true", help="all capabilities, no seccomp, all devices, writable /sys and cgroups (docs/container.md)")
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")


def run(args) -> int:
    from imgbuild.builder.runimage import RunOptions, run_image
    from imgbuild.store import Store

    options = RunOptions(
        image=args.image,
        command=list(args.command),
        env=list(args.env),
        network=args.network,
        user=args.user,
        workdir=args.workdir,
        entrypoint=args.entrypoint,
        runtime=args.runtime or os.environ.get("IMGBUILD_RUNTIME") or "runc",
        privileged=args.privileged,
        volumes=list(args.volume),
        env_files=list(args.env_file),
        interactive=args.interactive,
        tty=args.tty,
    )
    return run_image(Store(args.root), options, dict(os.environ))
