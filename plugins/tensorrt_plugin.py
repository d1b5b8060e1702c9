"""``toma::facility_location`` as a TensorRT plugin (Python plugin API, ``tensorrt.plugin``, TRT >= 10.8).

:func:`register_plugin` registers, once per process:

- ``@trtp.register``: the shape/type descriptor: ``features (B, T, S, C)`` float32/float16 ->
  ``indices (B, T, k)`` int32, attribute ``k``;
- ``@trtp.autotune``: input FP32 or FP16, output INT32, linear layout;
- ``@trtp.aot_impl``: the Triton kernel compiled to PTX for the build GPU
  (:func:`plugins.triton_selection.compile_selection_kernel`), its launch grid ``(B*T, 1, 1)``,
  block ``num_warps*32``, shared memory, and the int32 extra arguments ``S, C, K``. TensorRT
  launches it as ``(features, S, C, K, indices)`` — inputs, extra arguments, outputs — and
  embeds it in the engine, so the engine runs under plain ``trtexec`` without Python;
- ``@trtp.impl``: the JIT implementation, launching the same Triton kernel from Python on
  TensorRT's stream.

The ONNX parser reaches it from a node rewritten by :func:`plugins.onnx_mapping.to_tensorrt_nodes`.

Importing this module needs neither TensorRT nor a GPU; :func:`register_plugin` raises
:class:`TensorRTUnavailableError` naming what is missing. This module is the one home of the
TensorRT import check (:func:`import_tensorrt`, :class:`TensorRTUnavailableError`): the engine
backend (``toma_export.engines.trt_engine``) imports it from here, since ``toma_export`` may import
``plugins`` but ``plugins`` imports only ``toma_export.core`` and ``toma_export.errors``.

**Unverified here**: no TensorRT or GPU exists on the machine this was written on; the code
follows the documented ``tensorrt.plugin`` API (TensorRT ``python/packaging/bindings_wheel/tensorrt/plugin``
and ``samples/python/quickly_deployable_plugins``). The GPU tests in ``tests/test_tensorrt_*.py`` exercise it.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

from plugins import contract
from toma_export.errors import ToMAError


class TensorRTUnavailableError(ToMAError, RuntimeError):
    """TensorRT (or the piece of it a step needs) is not installed or not usable here."""


_INSTALL_HINT = (
    "install TensorRT >= 10.8 on a machine with an NVIDIA GPU and driver: `pip install tensorrt` "
    "(the wheel downloads NVIDIA's libraries from pypi.nvidia.com), with a CUDA build of torch "
    "(`pip install torch --index-url https://download.pytorch.org/whl/cu126`)"
)


def import_tensorrt() -> ModuleType:
    """The real ``tensorrt`` module, or :class:`TensorRTUnavailableError` saying what is missing."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        raise TensorRTUnavailableError(f"TensorRT is not installed ({e}); {_INSTALL_HINT}") from e
    # `tensorrt-stubs` installs a `tensorrt/` folder holding only .pyi files: it imports as an empty
    # namespace package. The real package has a version and the Builder class.
    if not hasattr(trt, "Builder") or not hasattr(trt, "__version__"):
        raise TensorRTUnavailableError(
            "the `tensorrt` importable here is only type stubs (tensorrt-stubs), not the TensorRT library; "
            + _INSTALL_HINT
        )
    return trt


def _import_trtp() -> ModuleType:
    trt = import_tensorrt()
    try:
        return importlib.import_module("tensorrt.plugin")
    except ImportError as e:
        raise TensorRTUnavailableError(
            f"TensorRT {trt.__version__} has no `tensorrt.plugin` module (the Python plugin API needs "
            f"TensorRT >= 10.7, AOT implementations >= 10.8): {e}; upgrade with `pip install -U tensorrt`"
        ) from e


def _import_triton() -> ModuleType:
    try:
        return importlib.import_module("triton")
    except ImportError as e:
        raise TensorRTUnavailableError(f"the selection plugin's kernel needs Triton: `pip install triton` ({e})") from e


_lock = threading.Lock()
_registered = False


def register_plugin() -> None:
    """Register ``toma::facility_location`` with TensorRT's plugin registry (idempotent)."""
    global _registered
    with _lock:
        if _registered:
            return
        _import_trtp()
        _import_triton()
        # Imported only now: it imports tensorrt.plugin at module level and keeps evaluated
        # (not postponed) annotations, which tensorrt.plugin reads to tell tensors from attributes.
        importlib.import_module("plugins._tensorrt_defs")
        _registered = True


def plugin_creator_registered() -> bool:
    """Whether TensorRT's registry holds a creator for ``toma::facility_location`` (needs TensorRT)."""
    trt = import_tensorrt()
    registry = trt.get_plugin_registry()
    for creator in registry.all_creators:
        if (
            creator.name == contract.TRT_PLUGIN_NAME
            and creator.plugin_namespace == contract.TRT_PLUGIN_NAMESPACE
            and creator.plugin_version == contract.TRT_PLUGIN_VERSION
        ):
            return True
    return False
