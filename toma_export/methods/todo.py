"""ToDo: self-attention keys/values from a nearest-neighbour-downsampled token grid; queries and
outputs keep every token, so there is no unmerge (``baselines.todo``)."""

from toma_export.methods.base import MergeMethod

METHOD = MergeMethod(name="todo", summary="ToDo key/value downsampling", keys_only=True)
