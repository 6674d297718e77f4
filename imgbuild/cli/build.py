"""``imgbuild [build] [-f FILE|-] [-t NAME]... CONTEXT``: the flags of ``docker build``."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from imgbuild.builder.options import (
    COMPRESSIONS,
    BuildOptions,
    parse_add_host,
    parse_annotation,
    parse_build_context,
    parse_key_value_list,
    parse_labels,
    parse_output,
    parse_secret,
    parse_ssh,
)
from imgbuild.cache.limits import parse_limit
from imgbuild.cli.tag import target_name
from imgbuild.context.buildfiles import read_dockerfile_stdin
from imgbuild.errors import DockerfileError, ImgbuildError, UsageError
from imgbuild.image import Platform
from imgbuild.layer.compression import check_compression


def add_arguments(parser) -> None:
    parser.add_argument(
        "context", metavar="CONTEXT", help="build context directory; - for a tar archive (or a Dockerfile) on stdin"
    )
    parser.add_argument("-f", "--file", help="Dockerfile (default CONTEXT/Dockerfile; - for stdin)")
    parser.add_argument("-t", "--tag", action="append", default=[], help="name:tag for the image (repeatable)")
    parser.add_argument("--build-arg", action="append", default=[], metavar="K[=V]", help="set a build arg")
    parser.add_argument("--target", help="build this stage (default: the last)")
    parser.add_argument("--platform", help="target platform os/arch[/variant] (default: the host)")
    parser.add_argument("--label", action="append", default=[], metavar="K=V", help="add an image label")
    parser.add_argument("--no-cache", action="store_true", help="run every step, ignore the cache")
    parser.add_argument(
        "--no-cache-filter", action="append", default=[], metavar="STAGE", help="do not use the cache for STAGE"
    )
    parser.add_argument(
        "--explain", action="store_true", help="after the build, say why each step that ran missed the cache"
    )
    parser.add_argument("--pull", action="store_true", help="re-resolve base images from their registry")
    parser.add_argument("--secret", action="append", default=[], metavar="id=X,src=F|env=V", help="a build secret")
    parser.add_argument(
        "--ca-cert", action="append", default=[], metavar="FILE",
        help="RUN steps trust this PEM CA certificate (repeatable); it stays out of the image and the cache key",
    )
    parser.add_argument("-o", "--output", action="append", default=[], metavar="SPEC", help="type=oci|docker|local|registry,dest=...")
    parser.add_argument("--push", action="store_true", help="push the image to its registry (needs -t)")
    parser.add_argument("--progress", default="auto", help="auto, tty, plain or json")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only the image ID (the config digest, as docker build -q)"
    )
    parser.add_argument("--iidfile", help="write the image ID (the config digest) to this file")
    parser.add_argument("--metadata-file", help="write build results as JSON to this file")
    parser.add_argument("--jobs", type=int, default=0, help="stages built at once (default: CPU count)")
    parser.add_argument("--runtime", default=None, help="OCI runtime: runc (default) or crun")
    parser.add_argument("--network", default="host", choices=("host", "none"), help="network for RUN (default host)")
    parser.add_argument("--compression", default="gzip", choices=COMPRESSIONS, help="layer compression (default gzip)")
    parser.add_argument("--compression-level", type=int, default=None, help="compression level")
    parser.add_argument(
        "--max-cache", metavar="SIZE", help="after the build, prune the store down to SIZE or N%% of its disk (default 80%%)"
    )
    parser.add_argument(
        "--min-free", metavar="SIZE", help="after the build, prune to keep SIZE or N%% of the disk free (default 20%%)"
    )
    parser.add_argument(
        "--cache-to", action="append", default=[], metavar="SPEC",
        help="export the cache: type=local,dest=DIR or type=registry,ref=REF (,mode=min|max)",
    )
    parser.add_argument(
        "--cache-from", action="append", default=[], metavar="SPEC",
        help="import a cache: type=local,src=DIR or type=registry,ref=REF (repeatable)",
    )
    parser.add_argument("--check", action="store_true", help="only run the build checks (as imgbuild check), build nothing")
    parser.add_argument("--insecure-registry", action="append", default=[], metavar="HOST", help="use plain HTTP for HOST")
    # buildx flags users paste from their pipelines
    parser.add_argument(
        "--load", action="store_true", help="accepted as buildx has it: the image always goes to the local store"
    )
    parser.add_argument(
        "--add-host", action="append", default=[], metavar="NAME:IP", help="a line for /etc/hosts in RUN"
    )
    parser.add_argument(
        "--annotation", action="append", default=[], metavar="[manifest:]K=V", help="annotate the image manifest"
    )
    parser.add_argument(
        "--build-context", action="append", default=[], metavar="NAME=DIR|docker-image://IMAGE",
        help="a named context for FROM NAME, COPY --from=NAME, RUN --mount=from=NAME",
    )
    parser.add_argument(
        "--ssh", action="append", default=[], metavar="default|ID=SOCKET", help="an SSH agent for RUN --mount=type=ssh"
    )


def options_from_args(args) -> BuildOptions:
    """The build's options; for ``-`` (the context on stdin), the context is
    filled in once stdin is read (``run``), after the flags are checked."""
    context = Path(args.context)
    if args.context == "-":
        if args.file == "-":
            raise UsageError("the context (-) and the Dockerfile (-f -) cannot both come from standard input")
    elif not context.is_dir():
        raise UsageError(f"build context {args.context!r} is not a directory")
    dockerfile = None
    dockerfile_text = None
    if args.file == "-":
        try:
            dockerfile_text = read_dockerfile_stdin().decode("utf-8")
        except UnicodeDecodeError as error:
            raise DockerfileError(f"the Dockerfile on standard input is not UTF-8 text: {error}") from None
    elif args.file:
        dockerfile = Path(args.file)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and not epoch.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH must be a whole number of seconds, not {epoch!r}")
    outputs = [parse_output(text) for text in args.output]
    check_flags(args, outputs)
    if args.push and not args.tag:
        raise UsageError("--push needs a name: add -t REGISTRY/NAME:TAG")
    if args.jobs < 0:
        raise UsageError(f"--jobs must be 0 (the CPU count) or more, not {args.jobs}")
    for flag, text in (("--max-cache", args.max_cache), ("--min-free", args.min_free)):
        if text:
            parse_limit(text, 0, flag)  # a usage error now, not after the build
    return BuildOptions(
        context=context,
        dockerfile=dockerfile,
        dockerfile_text=dockerfile_text,
        tags=[tag_name(tag) for tag in args.tag],
        build_args=parse_key_value_list(args.build_arg, "--build-arg"),
        target=args.target,
        platform=args.platform,
        labels=parse_labels(args.label),
        no_cache=args.no_cache,
        no_cache_filter=list(args.no_cache_filter),
        explain=args.explain,
        pull=args.pull,
        secrets=[parse_secret(text) for text in args.secret],
        ca_certs=[Path(path) for path in args.ca_cert],
        outputs=outputs,
        push=args.push,
        progress="quiet" if args.quiet else args.progress,
        iidfile=Path(args.iidfile) if args.iidfile else None,
        metadata_file=Path(args.metadata_file) if args.metadata_file else None,
        jobs=args.jobs,
        runtime=runtime_of(args),
        network=args.network,
        compression=args.compression,
        compression_level=args.compression_level,
        insecure_registries=list(args.insecure_registry),
        source_date_epoch=int(epoch) if epoch is not None else None,
        max_cache=args.max_cache,
        min_free=args.min_free,
        cache_to=_cache_specs(args.cache_to, "--cache-to"),
        cache_from=_cache_specs(args.cache_from, "--cache-from"),
        extra_hosts=[parse_add_host(text) for text in args.add_host],
        annotations=dict(parse_annotation(text) for text in args.annotation),
        build_contexts={c.name: c for c in map(parse_build_context, args.build_context)},
        ssh=dict(parse_ssh(text) for text in args.ssh),
    )


def with_stdin_context(options: BuildOptions, stdin) -> BuildOptions:
    """The options with the context that came on stdin: ``-f NAME`` names a
    file in it, as in ``docker build -f NAME - < context.tar``."""
    dockerfile = stdin.directory / options.dockerfile if options.dockerfile is not None else None
    if stdin.dockerfile_text is not None:  # stdin was a Dockerfile: the context is empty
        dockerfile = None
    return dataclasses.replace(
        options, context=stdin.directory, dockerfile=dockerfile, dockerfile_text=stdin.dockerfile_text
    )


def check_flags(args, outputs) -> None:
    """What can be wrong with the flags, found before any step runs (and
    whether or not any will: a fully cached build still checks them)."""
    check_compression(args.compression, args.compression_level)
    for output in outputs:
        compression = output.compression or args.compression
        level = output.compression_level if output.compression_level is not None else args.compression_level
        if output.compression is not None or output.compression_level is not None:
            check_compression(compression, level)
    if args.platform:
        check_platform(args.platform)
    runtime = runtime_of(args)
    if shutil.which(runtime) is None:
        raise UsageError(f"OCI runtime {runtime!r} not found: install it, or choose runc (--runtime runc)")


def tag_name(text: str) -> str:
    """A ``-t`` name, checked as ``imgbuild tag`` checks its target (one a registry can take)."""
    try:
        return target_name(text)
    except UsageError as error:
        raise UsageError(f"-t {text!r}: {error}") from None


def check_platform(text: str) -> None:
    if "," in text:
        raise UsageError(
            f"--platform {text!r}: multi-platform builds are not supported yet; build each platform on its own"
        )
    Platform.parse(text)


def runtime_of(args) -> str:
    return args.runtime or os.environ.get("IMGBUILD_RUNTIME") or "runc"


def _cache_specs(texts: list[str], flag: str) -> list:
    """--cache-from/--cache-to; the cache share code is loaded only when one is given."""
    if not texts:
        return []
    from imgbuild.cache.share import parse_cache_spec

    return [parse_cache_spec(text, flag) for text in texts]


def run(args) -> int:
    from imgbuild.builder import record
    from imgbuild.store import Store

    started = time.monotonic()
    store = None
    try:
        options = options_from_args(args)
        store = Store(args.root)
        # A fully cached rebuild is taken from the build's record, without the builder (builder/record.py),
        # and so is one whose only change is in the files of the last COPY (builder/lastcopy.py).
        found = record.plan(args)
        if found is not None and record.replay(found, args, options, store, started):
            return 0
        from imgbuild.builder.builder import build
        from imgbuild.cli import freeze_late_imports

        freeze_late_imports()
        with build_context(args, store, options) as options:
            if args.check:  # the build checks only; nothing is built
                from imgbuild.cli.check import check_build

                return check_build(options, args.root)
            result = build(store, options, journal=record.Journal(found) if found is not None else None)
    except ImgbuildError as error:
        if args.progress == "json" and not args.quiet and not error.reported:  # the JSON stream stays JSON
            from imgbuild.builder.progress import make_progress

            progress = make_progress("json")
            progress.build_failed(error)
            progress.close()
        raise
    finally:
        if store is not None:
            # Closing the last connection writes the index's WAL into index.db
            # (the build's rows reach the disk here), now rather than whenever
            # the collector frees the connection: it was frozen above.
            store.db.close()
    if args.quiet:
        # the image ID, as docker build -q prints and --iidfile holds; not the manifest digest
        print(result.image.config_descriptor.digest)
    return 0


@contextmanager
def build_context(args, store, options: BuildOptions):
    """The options, with the context read from stdin first for ``-`` (removed afterwards)."""
    if args.context != "-":
        yield options
        return
    from imgbuild.context.stdin import context_from_stdin

    with context_from_stdin(store) as stdin:
        yield with_stdin_context(options, stdin)
