"""ToDo: self-attention keys/values from a nearest-neighbour-downsampled token grid; queries and
outputs keep every token, so there is no unmerge (``baselines.todo``). UNets and Flux.1 run it through
their eager adapters; other transformers through the key/value graph pass (``graph.kv_downsample``)."""

from toma_export.methods.base import MergeMethod

METHOD = MergeMethod(name="todo", summary="ToDo key/value downsampling", keys_only=True, graph_kv=True)
