"""Where a stage is while it builds, and what it leaves for the stages after it."""

from __future__ import annotations

from dataclasses import field

from imgbuild.dataclass import dataclass
from imgbuild.image import LayerRef

TYPE_CHECKING = False  # typing's own, without importing typing: 2 ms of every build
if TYPE_CHECKING:
    from imgbuild.builder.pending import PendingLayer


@dataclass
class StageState:
    """A stage so far: its config, its layers, and the key of the last step."""

    config: dict
    layers: list[LayerRef]
    key: str
    cmd_set: bool = False  # CMD given in this stage (ENTRYPOINT then keeps it)
    base_name: str = ""
    base_layers: int = 0  # how many of ``layers`` come from a base image (never rewritten)
    # For the record of each key's inputs (``imgbuild cache inspect``), not for keys:
    base_digest: str = ""  # the manifest digest the chain starts from, "scratch" for none
    entry_key: str = ""  # the cache entry of the last step that made (or looked up) a layer
    instruction: object = None  # the instruction being built
    scope: object = None  # the stage's StageScope, for the env and args a step sees
    pending: PendingLayer | None = None  # a step's layer, written while the next step (a RUN) runs


@dataclass
class StageResult:
    """A built stage: its config and layers, for the stages that build on it or copy from it."""

    index: int
    name: str | None
    config: dict
    layers: list[LayerRef]
    key: str
    base_layers: int = 0
    base_digest: str = ""
    entry_key: str = ""
    args: dict[str, str] = field(default_factory=dict)  # its ARGs with values, for stages built FROM it
