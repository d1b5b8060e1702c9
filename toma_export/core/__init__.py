"""The method's maths: tile layouts, facility-location selection, merge/unmerge maps.

Pure tensor functions batched over batch x tiles. Every backend (eager patches, the graph
pass, ONNX lowering, plugins' references) calls these; the maths lives here once.
"""

from toma_export.core.merge import MergeMap, merge_weights
from toma_export.core.selection import facility_location, tokens_kept
from toma_export.core.tiles import TileLayout

__all__ = [
    "MergeMap",
    "TileLayout",
    "facility_location",
    "merge_weights",
    "tokens_kept",
]
