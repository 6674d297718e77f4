"""Writing a blob: into a temp file while hashing, then verify, fsync and rename into place.

So a file under ``blobs/sha256/`` always holds the bytes its name says, even
after a crash or a full disk midway (the temp file is removed, never renamed).
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from imgbuild.errors import DigestMismatch, StoreError, disk_full, is_disk_full
from imgbuild.image import check_digest
from imgbuild.store.atomic import fsync_dir

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from imgbuild.store import Store


class BlobWriter:
    """Streams bytes into a temp file while hashing them; ``commit`` verifies and publishes."""

    def __init__(self, store: Store, expected_digest: str | None):
        self.store = store
        self.expected_digest = check_digest(expected_digest) if expected_digest else None
        self._hash = hashlib.sha256()
        fd, self._tmp_name = tempfile.mkstemp(dir=store.work_dir(), prefix="blob-")
        self._file = os.fdopen(fd, "wb")
        self.size = 0
        self.digest: str | None = None

    def write(self, data: bytes) -> int:
        try:
            self._file.write(data)
        except OSError as error:
            raise self._failed(error) from None
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def content_digest(self) -> str:
        """The digest of the bytes written so far, as hashed on their way into the file.

        A writer that needs the blob's digest (the layer writer) takes this
        one instead of hashing the same bytes again; ``commit`` names the
        file by this same hash, so the two cannot disagree.
        """
        return "sha256:" + self._hash.hexdigest()

    def commit(self) -> str:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as error:
            self.discard()
            raise self._failed(error) from None
        digest = self.content_digest()
        if self.expected_digest and digest != self.expected_digest:
            self.discard()
            raise DigestMismatch(f"blob content has digest {digest}, expected {self.expected_digest}")
        target = self.store.blob_path(digest)
        os.chmod(self._tmp_name, 0o644)
        try:
            os.replace(self._tmp_name, target)  # a new directory block may not fit
        except OSError as error:
            self.discard()
            raise self._failed(error) from None
        fsync_dir(target.parent)
        self.digest = digest
        return digest

    def discard(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # flushing what is buffered failed (a full disk): the file goes anyway
        try:
            os.unlink(self._tmp_name)
        except FileNotFoundError:
            pass

    def _failed(self, error: OSError) -> OSError | StoreError:
        if is_disk_full(error):
            return disk_full(error, "writing a blob into the store", self.store.root)
        return error
