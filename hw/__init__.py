"""moepim.hw: Amaranth RTL of the accelerator. Never imports ``moepim.models``."""

from .crossbar import CrossbarArray, CrossbarPort
from .gocache import GateOutputCache
from .params import TileGeometry
from .peripherals import PeripheralSet
from .routers import ExpertChoiceRouter, TokenChoiceRouter
from .scheduler import GroupScheduler
from .softmax import GateSoftmax
from .tile_group import TileGroup
from .topk import StreamingTopK

__all__ = ["CrossbarArray", "CrossbarPort", "ExpertChoiceRouter", "GateOutputCache",
           "GateSoftmax", "GroupScheduler", "PeripheralSet", "StreamingTopK", "TileGeometry",
           "TileGroup", "TokenChoiceRouter"]
