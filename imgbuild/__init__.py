"""imgbuild: a daemonless Dockerfile-to-OCI-image builder.

The command-line tool is a thin layer over this package. Entry points for
programs and tests:

- ``imgbuild.build(store, options)``: build a Dockerfile into an image;
- ``imgbuild.dockerfile.parse`` / ``imgbuild.dockerfile.plan``: the front end;
- ``imgbuild.store.Store``: the local content-addressed store (an OCI layout).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from imgbuild.builder.finalimage import BuildResult
    from imgbuild.builder.options import BuildOptions
    from imgbuild.builder.progress import Progress
    from imgbuild.store import Store

__version__ = "0.1.0"


def build(store: Store, options: BuildOptions, progress: Progress | None = None) -> BuildResult:
    """Build ``options.context`` into ``store`` as ``options`` say (see BuildOptions)."""
    # imported here so that `import imgbuild` stays cheap for the CLI's other verbs
    from imgbuild.builder.builder import build as build_image

    return build_image(store, options, progress)
