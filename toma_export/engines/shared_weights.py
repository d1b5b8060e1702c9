"""One copy of the weights for several ONNX Runtime sessions of the same model.

A ToMA artifact runs a select and a reuse variant, and the benchmark adds an unmerged and an ideal
session: each loads its own copy of the weights, so a model of a few GB (FLUX.2, Flux at real width)
needs four copies at once. ONNX Runtime takes user-owned initializers (``SessionOptions.add_initializer``)
instead of the file's; sessions given the same arrays share them.

Identity is by content, not by name: exports name folded constants ``val_N`` per export, so the same
weight (a transposed linear weight) has other names in the select and reuse variants, and two graphs
may give one name to different tensors. An initializer is shared when its ONNX type, shape and a
BLAKE2 digest of its bytes match, whatever its name (measured on ``flux2-klein-d2``: keyed by name as
well, the reuse session shared none of the select session's folded weights, +3.7 GB; by content, +0). Prepacking must be off for sessions that share
(``session.disable_prepacking``): a prepacked MatMul weight is a private copy per session, which would
undo the saving. That costs speed (packing at run time instead), so sharing is opt-in.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

Key = tuple[int, tuple[int, ...], bytes]  # ONNX type, shape, BLAKE2 digest of the bytes


@dataclass(eq=False)
class SharedInitializer:
    """An array and the OrtValue over its memory; sessions using it must keep this object alive."""

    array: np.ndarray
    value: Any  # onnxruntime.OrtValue


class WeightPool:
    """Initializers by content, held weakly: an entry lives as long as some session's engine holds it."""

    def __init__(self) -> None:
        self._entries: weakref.WeakValueDictionary[Key, SharedInitializer] = weakref.WeakValueDictionary()

    def __len__(self) -> int:
        return len(self._entries)

    def attach(self, options: Any, model_path: str | Path) -> list[SharedInitializer]:
        """Add every external-data initializer of ``model_path`` to ``options`` from the pool (reading it
        into the pool the first time it is seen) and turn prepacking off. Returns the entries, which the
        caller keeps alive as long as its session."""
        import onnxruntime as ort

        options.add_session_config_entry("session.disable_prepacking", "1")
        held = []
        for name, onnx_type, array in _external_initializers(Path(model_path)):
            key: Key = (onnx_type, tuple(array.shape), hashlib.blake2b(array.data, digest_size=16).digest())
            entry = self._entries.get(key)
            if entry is None:
                entry = SharedInitializer(array, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, onnx_type))
                self._entries[key] = entry
            options.add_initializer(name, entry.value)
            held.append(entry)
        return held


def _external_initializers(path: Path) -> Iterator[tuple[str, int, np.ndarray]]:
    """``(name, ONNX element type, array)`` per initializer stored in external data, read one at a time
    (peak: one tensor). Types numpy lacks (bfloat16, float8) are read as their same-width integer bits."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path), load_external_data=False)
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in init.external_data}
        dtype = np.dtype(tensor_dtype_to_np_dtype(init.data_type))
        if dtype.kind == "V":  # ml_dtypes' bfloat16 / float8: OrtValue takes the bits with the ONNX type
            dtype = np.dtype(f"i{dtype.itemsize}")
        count = int(np.prod(init.dims, dtype=np.int64))
        offset = int(info.get("offset", 0))
        array = np.fromfile(path.parent / info["location"], dtype=dtype, count=count, offset=offset)
        yield init.name, init.data_type, array.reshape(tuple(init.dims))
