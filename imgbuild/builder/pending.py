"""A step's layer, written while the next step's container runs.

A step that makes a layer need not make the RUN after it wait for that
layer: the RUN's overlay only needs the step's changeset, and the changeset
is final once it is unmounted, pruned and given the times its tar records
(``Workspace.ready``). So such a step stops there and leaves a
``PendingLayer`` in its stage's state. The RUN mounts the changeset as its
top lower layer, starts its container, and writes the pending layer while
the container runs (``Workspace.meanwhile``): the blob, the syncs, the index
rows, the cache entry and the rest of the step (its history, the stage's
list of layers). The container and this process then work on two cores at
once. Any other step settles the pending layer before it does anything.

The changeset is a lower layer of the RUN's overlay: writing the layer
renames it into the store's snapshots (the mount holds the directory, not
its path) and never removes it; ``release`` removes what is left of the
step's scratch space once the overlay on top is unmounted.

A failure to write the layer is its step's own: the step is shown failed
and the error names its Dockerfile line; the container running on top is
stopped as an interrupt stops it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imgbuild.dataclass import dataclass
from imgbuild.errors import ImgbuildError, Interrupted
from imgbuild.image import LayerRef
from imgbuild.store import remove_tree

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from imgbuild.builder.state import StageState


@dataclass
class PendingLayer:
    """A step's readied changeset whose layer is still to be written."""

    changes: Path  # the readied upperdir: the next step's top lower layer
    scratch: Path  # the step's scratch space (the changeset in it), removed by ``release``
    # Writes the layer and ends the step: the layer written, and the layer the
    # stage lists for the step (another build's, if it recorded the key first).
    write: Callable[[], tuple[LayerRef, LayerRef | None]]
    failed: Callable[[ImgbuildError], ImgbuildError]  # the step shown failed; the error with its line
    layer: LayerRef | None = None  # as the stage lists it, once written
    replaced: bool = False  # the stage lists another layer than ``changes``
    finished: bool = False

    def finish(self) -> None:
        """Write the layer and end its step; once (later calls do nothing)."""
        if self.finished:
            return
        self.finished = True
        try:
            written, self.layer = self.write()
        except ImgbuildError as error:
            raise self.failed(error) from None
        self.replaced = self.layer is None or self.layer.diff_id != written.diff_id

    def finish_despite(self, error: BaseException) -> None:
        """The step on top, or the build, failed with ``error`` first: write
        the layer anyway, so that a rerun finds this step cached, unless the
        build is being interrupted. ``error`` stays the one raised; a failure
        here is shown at this step."""
        if isinstance(error, (Interrupted, KeyboardInterrupt)):
            return
        try:
            self.finish()
        except ImgbuildError:
            pass

    def release(self) -> None:
        """Remove what is left of the step's scratch space: call it once
        nothing has the changeset mounted any more."""
        remove_tree(self.scratch)


def take(state: StageState) -> PendingLayer | None:
    """The stage's pending layer, if any, now the caller's to finish and
    release: a RUN takes it as it opens the workspace that mounts it."""
    pending, state.pending = state.pending, None
    return pending


def settle(state: StageState) -> None:
    """Write the stage's pending layer, if any: before a step that does not
    mount it, and at the end of the stage."""
    pending = take(state)
    if pending is not None:
        try:
            pending.finish()
        finally:
            pending.release()


def settle_despite(state: StageState, error: BaseException) -> None:
    """The stage failed with ``error``: its pending layer, if any, as
    ``PendingLayer.finish_despite`` has it, and its scratch space removed."""
    pending = take(state)
    if pending is not None:
        try:
            pending.finish_despite(error)
        finally:
            pending.release()
