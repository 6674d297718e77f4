"""imgbuild: a daemonless Dockerfile-to-OCI-image builder.

The command-line tool is a thin layer over this package. Entry points for
programs and tests:

- ``imgbuild.dockerfile.parse`` / ``imgbuild.dockerfile.plan``: the front end;
- ``imgbuild.store.Store``: the local content-addressed store (an OCI layout);
- ``imgbuild.build``: build a Dockerfile into an image.
"""

__version__ = "0.1.0"


def build(*args, **kwargs):
    """Build a Dockerfile; see ``imgbuild.build.engine.build`` for the parameters."""
    from imgbuild.build.engine import build as _build

    return _build(*args, **kwargs)
