"""moepim.hw: Amaranth RTL of the accelerator. Never imports ``moepim.models``."""

from .crossbar import CrossbarArray, CrossbarPort
from .gocache import GateOutputCache
from .params import TileGeometry
from .peripherals import PeripheralSet
from .scheduler import GroupScheduler
from .tile_group import TileGroup
from .topk import StreamingTopK

__all__ = ["CrossbarArray", "CrossbarPort", "GateOutputCache", "GroupScheduler", "PeripheralSet", "StreamingTopK",
           "TileGeometry",
           "TileGroup"]
