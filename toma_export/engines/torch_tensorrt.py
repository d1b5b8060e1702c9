"""torch-tensorrt path: the rewritten ``torch.export`` program compiled by ``torch_tensorrt.dynamo.compile``.

The ``toma`` custom ops become TensorRT plugins:

- ``toma::facility_location`` maps onto our own ``tensorrt.plugin`` definition (Triton kernel, AOT
  PTX + JIT; :mod:`plugins.tensorrt_plugin`) through
  ``torch_tensorrt.dynamo.conversion.plugins.generate_plugin_converter(plugin_id, ...)``, which
  registers a converter for the torch op with the same qualified name;
- any other ``toma::*`` op (merge/unmerge when the graph pass keeps them as custom ops) gets a
  plugin generated from its torch implementation and fake kernel by
  ``torch_tensorrt.dynamo.conversion.plugins.custom_op(name, supports_dynamic_shapes=True)``
  (JIT plugin calling back into the torch op).

Lazy imports: importing this module needs neither torch-tensorrt nor TensorRT; the functions raise
:class:`TorchTensorRTUnavailableError` naming what is missing.

**Unverified** (no GPU / torch-tensorrt here). Known point to check on a GPU: the plugin's output is
int32 (ONNX contract) while the torch op returns int64; the converter's output feeds index ops
that accept int32 in TensorRT, but a downstream op that needs int64 would need a cast.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import torch

from plugins import contract
from toma_export.dtypes import precision_dtype
from toma_export.errors import ToMAConfigError
from toma_export.engines.trt_engine._trt import TensorRTUnavailableError, require_cuda, require_tensorrt

class TorchTensorRTUnavailableError(TensorRTUnavailableError):
    """torch-tensorrt is missing or unusable."""


def require_torch_tensorrt() -> ModuleType:
    """``torch_tensorrt``, after checking TensorRT and CUDA; clear error otherwise."""
    require_tensorrt()
    try:
        tt = importlib.import_module("torch_tensorrt")
    except ImportError as e:
        raise TorchTensorRTUnavailableError(
            f"torch-tensorrt is not installed ({e}); on a CUDA machine: `pip install torch-tensorrt` "
            f"matching torch {torch.__version__} (it pins an exact torch and TensorRT version)"
        ) from e
    try:
        importlib.import_module("torch_tensorrt.dynamo.conversion.plugins")
    except ImportError as e:
        raise TorchTensorRTUnavailableError(
            f"torch-tensorrt {getattr(tt, '__version__', '?')} has no plugin generation "
            f"(torch_tensorrt.dynamo.conversion.plugins, torch-tensorrt >= 2.6): {e}"
        ) from e
    require_cuda()
    return tt


_converted: set[str] = set()


def register_plugin_converters(extra_ops: Iterable[str] = (), *, aot: bool = True) -> list[str]:
    """Make the ``toma`` custom ops convertible; return the op names handled. Idempotent."""
    require_torch_tensorrt()
    plugins_mod: Any = importlib.import_module("torch_tensorrt.dynamo.conversion.plugins")
    from plugins.tensorrt_plugin import register_plugin

    done = []
    if contract.TORCH_OP_QUALNAME not in _converted:
        import toma_export.ops  # noqa: F401  (registers torch.ops.toma.facility_location)

        register_plugin()
        plugins_mod.generate_plugin_converter(
            contract.TRT_PLUGIN_ID, supports_dynamic_shapes=True, use_aot_if_available=aot
        )
        _converted.add(contract.TORCH_OP_QUALNAME)
    done.append(contract.TORCH_OP_QUALNAME)
    for name in extra_ops:
        if name == contract.TORCH_OP_QUALNAME:
            continue
        if not name.startswith("toma::"):
            raise ToMAConfigError(f"{name!r} is not a toma custom op")
        if name not in _converted:
            plugins_mod.custom_op(name, supports_dynamic_shapes=True)
            _converted.add(name)
        done.append(name)
    return done


def toma_ops_in(program: torch.export.ExportedProgram) -> list[str]:
    """Qualified names (``toma::name``) of the toma custom ops the program calls."""
    names = set()
    for node in program.graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
            if target.namespace == "toma":
                names.add(f"toma::{target._opname}")
    return sorted(names)


def compile_program(
    exported_program: torch.export.ExportedProgram,
    inputs: Sequence[Any],
    precision: str = "fp16",
    *,
    aot_plugins: bool = True,
    **settings: Any,
) -> torch.fx.GraphModule:
    """Compile the rewritten program with ``torch_tensorrt.dynamo.compile``; toma ops become plugins.

    ``inputs``: example tensors or ``torch_tensorrt.Input`` specs (min/opt/max shapes for dynamic
    dims). ``settings`` are passed to ``torch_tensorrt.dynamo.compile`` (e.g. ``workspace_size``).
    """
    dtype = precision_dtype(precision, ToMAConfigError, "precision", "pass one of those")
    tt = require_torch_tensorrt()
    register_plugin_converters(toma_ops_in(exported_program), aot=aot_plugins)
    kwargs: dict[str, Any] = {"enabled_precisions": {dtype}, "min_block_size": 1}
    kwargs.update(settings)
    compiled: torch.fx.GraphModule = tt.dynamo.compile(exported_program, inputs=list(inputs), **kwargs)
    return compiled
