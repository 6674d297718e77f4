"""Image archives: ``imgbuild save`` writes them, ``imgbuild load`` reads them.

Two formats (docs/store.md shows both):

- ``oci``: a tar of an OCI image layout: ``oci-layout``, ``index.json`` with one
  entry per tag (``org.opencontainers.image.ref.name`` = the tag, e.g.
  ``busybox:latest``, as in the store), and ``blobs/sha256/<hex>``. Read by
  ``skopeo``/``podman`` as ``oci-archive:FILE:busybox:latest``.
- ``docker``: a docker-archive as ``docker save`` writes it: ``manifest.json``
  (``Config``, ``RepoTags``, ``Layers``), ``repositories``, and the config and
  layer files, here stored under ``blobs/sha256/<hex>`` as Docker 25 does.
  Layers are written as they are in the store (gzip or plain tar), which
  ``docker load`` and ``podman load`` both accept; zstd layers are decompressed
  to plain tars first, since older loaders do not know zstd.

Archives stream: blobs go from the store into the tar (and from the tar into
the store) in bounded chunks, and every blob is verified against its digest on
the way. ``load`` never extracts the archive to disk: it reads members by name,
and refuses archives whose entries or links point outside the archive. The tar
headers are written and read by ``imgbuild.layer.tarformat``.

- ``names.py``: image names in archives, member names of blobs
- ``save.py``: what ``save`` writes, and the two archive writers
- ``reader.py``: random access to the members of an untrusted archive
- ``load.py``: the docker-archive and OCI-archive loaders
"""
