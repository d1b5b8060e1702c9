"""Run a serialized TensorRT engine on torch CUDA tensors (TensorRT 10 Python API).

:class:`TrtEngine` follows the engine interface of :class:`toma_export.engines.onnxruntime.OrtEngine`
(``input_names``, ``output_names``, ``device``, ``input_shapes()``, ``engine(feeds) -> list[Tensor]``):

- deserializes the plan, creates one execution context, and picks the optimisation profile whose
  ranges hold the input shapes (``set_optimization_profile_async``);
- keeps preallocated device buffers (torch CUDA tensors) per input shape; every tensor address is
  bound with ``set_tensor_address`` and the engine runs with ``execute_async_v3`` on a torch stream;
- optionally captures the run in a CUDA graph per input shape (``cuda_graph=True``): inputs are
  copied into the static buffers and the graph is replayed. As TensorRT's docs require, one
  ``execute_async_v3`` runs before capture so deferred shape updates are not captured.

Shapes outside every profile raise :class:`TrtShapeError` naming the allowed ranges.
A selection plugin used with ``aot=False`` (JIT) needs :func:`plugins.tensorrt_plugin.register_plugin`
before deserializing; it is called when ``register_plugins=True`` (default).

Unverified on a GPU (none here): written against the TensorRT 10 API as typed by ``tensorrt-stubs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from toma_export.engines.trt_engine._trt import require_cuda, require_tensorrt
from toma_export.errors import ToMAError

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


def _dims(d: Any) -> tuple[int, ...]:
    """``trt.Dims`` (indexable, sized) as a tuple of ints."""
    return tuple(int(d[i]) for i in range(len(d)))


class TrtShapeError(ToMAError, ValueError):
    """Input shapes fall outside every optimisation profile of the engine."""


@dataclasses.dataclass
class _Bound:
    """Buffers (and optionally a captured graph) for one set of input shapes."""

    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    graph: torch.cuda.CUDAGraph | None = None


class TrtEngine:
    """A deserialized TensorRT engine called with named torch tensors."""

    def __init__(
        self,
        engine: bytes | str | Path,
        *,
        cuda_graph: bool = False,
        register_plugins: bool = True,
        device: int | None = None,
    ) -> None:
        require_tensorrt()
        require_cuda()
        import tensorrt as trt

        if register_plugins:
            from plugins.tensorrt_plugin import register_plugin

            register_plugin()
        self.path = Path(engine) if not isinstance(engine, bytes) else None
        blob = engine if isinstance(engine, bytes) else Path(engine).read_bytes()
        self.device = "cuda"
        self._device = torch.device("cuda", torch.cuda.current_device() if device is None else device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise ToMAError(
                "TensorRT could not deserialize the engine: built by another TensorRT version or GPU, "
                "or a plugin it uses is not registered; rebuild it here"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.cuda_graph = cuda_graph
        self._stream = torch.cuda.Stream(device=self._device)
        self._profile = -1
        self._bound: dict[tuple[tuple[int, ...], ...], _Bound] = {}

    # --- engine description ------------------------------------------------------------------

    def dtype(self, name: str) -> torch.dtype:
        dt = self.engine.get_tensor_dtype(name)
        key = str(dt).split(".")[-1]
        if key not in _TORCH_DTYPES:
            raise ToMAError(f"tensor {name!r} has TensorRT type {dt}, which this runtime does not map to torch")
        return _TORCH_DTYPES[key]

    def profile_ranges(self, profile: int) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        out: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        for name in self.input_names:
            lo, opt, hi = self.engine.get_tensor_profile_shape(name, profile)
            out[name] = (_dims(lo), _dims(opt), _dims(hi))
        return out

    def input_shapes(self) -> dict[str, list[Any]]:
        return {n: list(_dims(self.engine.get_tensor_shape(n))) for n in self.input_names}

    def _pick_profile(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        n = max(1, self.engine.num_optimization_profiles)
        for p in range(n):
            ranges = self.profile_ranges(p)
            if all(
                len(shapes[k]) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shapes[k], hi))
                for k, (lo, _, hi) in ranges.items()
            ):
                return p
        allowed = [{k: (lo, hi) for k, (lo, _, hi) in self.profile_ranges(p).items()} for p in range(n)]
        raise TrtShapeError(
            f"input shapes {dict(shapes)} are outside every optimisation profile of this engine "
            f"(min, max per input: {allowed}); rebuild the engine with a profile that covers them"
        )

    # --- execution --------------------------------------------------------------------------------

    def _bind(self, shapes: Mapping[str, tuple[int, ...]]) -> _Bound:
        key = tuple(shapes[n] for n in self.input_names)
        bound = self._bound.get(key)
        profile = self._pick_profile(shapes)
        if profile != self._profile:
            if not self.context.set_optimization_profile_async(profile, self._stream.cuda_stream):
                raise ToMAError(f"TensorRT refused optimisation profile {profile}")
            self._profile = profile
            bound = None  # addresses and shapes are re-set below
        for name in self.input_names:
            if not self.context.set_input_shape(name, tuple(shapes[name])):
                raise TrtShapeError(f"TensorRT refused shape {shapes[name]} for input {name!r}")
        if bound is None:
            ins = {n: torch.empty(shapes[n], dtype=self.dtype(n), device=self._device) for n in self.input_names}
            outs = {}
            for n in self.output_names:
                shape = _dims(self.context.get_tensor_shape(n))
                if any(d < 0 for d in shape):
                    raise ToMAError(f"output {n!r} has a data-dependent shape {shape}; not supported by this runtime")
                outs[n] = torch.empty(shape, dtype=self.dtype(n), device=self._device)
            bound = _Bound(ins, outs)
            self._bound[key] = bound
        for n, t in {**bound.inputs, **bound.outputs}.items():
            if not self.context.set_tensor_address(n, t.data_ptr()):
                raise ToMAError(f"TensorRT refused the buffer address for {n!r}")
        return bound

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise ToMAError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ToMAError(f"engine needs inputs {missing}; got {sorted(feeds)}")
        shapes = {n: tuple(int(d) for d in feeds[n].shape) for n in self.input_names}
        bound = self._bind(shapes)
        current = torch.cuda.current_stream(self._device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            for n in self.input_names:
                bound.inputs[n].copy_(feeds[n].to(self._device, non_blocking=True), non_blocking=True)
            if self.cuda_graph:
                if bound.graph is None:
                    self._execute()  # settle deferred updates before capture (TensorRT docs)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self._stream):
                        self._execute()
                    bound.graph = graph
                bound.graph.replay()
            else:
                self._execute()
        current.wait_stream(self._stream)
        # Buffers are reused by the next call with the same shapes: hand out copies.
        return [bound.outputs[n].clone() for n in self.output_names]
