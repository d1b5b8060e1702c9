"""ONNX Runtime engine: the embedded default backend (CPU here; CUDA provider when present).

Inputs and outputs go through IO binding on the tensors' own memory, so a call copies nothing
on CPU and stays on the device with the CUDA provider.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from toma_export.engines.shared_weights import WeightPool
from toma_export.errors import ToMAError

_NP_TYPES = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.bool: np.bool_,
    torch.float64: np.float64,
}


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OrtEngine:
    """One ONNX Runtime session over an ``.onnx`` file, called with named torch tensors."""

    def __init__(
        self, path: str | Path, *, providers: Sequence[str] | None = None, threads: int | None = None,
        memory_arena: bool = True, weights: WeightPool | None = None,
    ):
        """``memory_arena=False`` frees activations after each run instead of keeping the session's peak:
        for processes holding many sessions at once (the benchmark's rows), at some allocation cost.
        ``weights``: take the file's external initializers from this pool, one copy for every session
        given the same pool (prepacking off; :mod:`toma_export.engines.shared_weights`)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = memory_arena
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            opts.intra_op_num_threads = threads
        self._shared = weights.attach(opts, path) if weights is not None else []  # alive as long as the session
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=list(providers or default_providers()))
        except Exception as err:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            text = str(err)
            hint = ""
            if "toma" in text and ("not a registered function" in text or "No Op registered" in text):
                hint = (
                    " The graph holds a `toma` plugin node that ONNX Runtime cannot run; build with "
                    "--selection unrolled for ONNX Runtime (plugin nodes are for TensorRT)."
                )
            raise ToMAError(f"ONNX Runtime could not load {path}: {text.strip()}{hint}") from err
        self.path = Path(path)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def input_shapes(self) -> dict[str, list[Any]]:
        return {i.name: list(i.shape) for i in self.session.get_inputs()}

    def __call__(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ToMAError(f"engine {self.path.name} needs inputs {missing}; got {sorted(feeds)}")
        binding = self.session.io_binding()
        kept: list[Any] = []
        for name in self.input_names:
            t = feeds[name].contiguous()
            if t.device.type != self.device:
                t = t.to(self.device)
            kept.append(t)  # keep alive until the run finishes
            if t.dtype == torch.bfloat16:  # numpy has no bfloat16: bind the bits with ONNX's type
                binding.bind_ortvalue_input(name, _bf16_ortvalue(t))
                continue
            if t.dtype not in _NP_TYPES:
                raise ToMAError(f"engine {self.path.name}: input {name} is {t.dtype}, which it cannot take; "
                                "pass the dtype the artifact was built for (its manifest's extra.precision).")
            binding.bind_input(
                name,
                device_type=t.device.type,
                device_id=t.device.index or 0,
                element_type=_NP_TYPES[t.dtype],
                shape=tuple(t.shape),
                buffer_ptr=t.data_ptr(),
            )
        for name in self.output_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        if self.device == "cpu":
            return [_cpu_tensor(o) for o in outs]
        return [torch.from_dlpack(o._ortvalue.to_dlpack() if not hasattr(o, "to_dlpack") else o.to_dlpack())
                for o in outs]


def _bf16_ortvalue(t: torch.Tensor) -> Any:
    """A CPU bf16 tensor as an OrtValue of ONNX type BFLOAT16 (its bits as int16; numpy has no bf16)."""
    import onnxruntime as ort

    bits = t.cpu().view(torch.int16).numpy()
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, 16)  # TensorProto.BFLOAT16


def _cpu_tensor(value: Any) -> torch.Tensor:
    """An ONNX Runtime CPU output as a torch tensor (bf16 through DLPack, which numpy cannot hold)."""
    if value.data_type() == "tensor(bfloat16)":
        return torch.from_dlpack(value._ortvalue.to_dlpack())
    return torch.from_numpy(value.numpy())
