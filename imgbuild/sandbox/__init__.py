"""The sandbox a RUN step runs in: overlay mounts, the OCI runtime and its bundle.

``overlay.py`` mounts snapshots as a root filesystem; ``runtime.py`` writes the
runtime spec (Docker's confinement) and runs runc; ``privatebundle.py`` is the
program that starts runc with its bundle on a private tmpfs; ``seccomp.py`` is
Docker's default profile; ``users.py`` resolves ``USER`` inside the image;
``runmounts.py`` prepares ``RUN --mount`` sources.
"""
