"""moepim.hw: Amaranth RTL of the accelerator. Never imports ``moepim.models``."""

from moepim.spec.tile import TileSpec

from .crossbar import CrossbarArray, CrossbarPort
from .gocache import GateOutputCache
from .peripherals import PeripheralSet
from .routers import ExpertChoiceRouter, TokenChoiceRouter
from .scheduler import GroupScheduler
from .softmax import GateSoftmax
from .tile_group import TileGroup
from .topk import StreamingTopK

__all__ = ["CrossbarArray", "CrossbarPort", "ExpertChoiceRouter", "GateOutputCache",
           "GateSoftmax", "GroupScheduler", "PeripheralSet", "StreamingTopK", "TileSpec",
           "TileGroup", "TokenChoiceRouter"]
