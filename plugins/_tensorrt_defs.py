"""The ``tensorrt.plugin`` definitions of ``toma::facility_location``; imported by
:func:`plugins.tensorrt_plugin.register_plugin` only, once TensorRT is known to be present.

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the annotations with
``inspect.signature`` to tell input tensors (``TensorDesc``) from attributes, so they must be objects.
"""

from typing import Any, List, Tuple

import tensorrt as trt
import tensorrt.plugin as trtp

from plugins import contract

PLUGIN_ID = contract.TRT_PLUGIN_ID


def _tile_block_dim(desc: Any) -> int:
    """Tokens per tile ``S`` (axis 2) that fixes ``BLOCK_S`` of the AOT kernel.

    A build-time constant when the network has a static tile size (the normal case); otherwise the
    profile's upper bound, so ``BLOCK_S`` covers every ``S`` the engine accepts.
    """
    expr = desc.shape_expr[2]
    if not expr.is_fake and expr.is_constant:
        return int(expr.constant_value())
    shape = desc.shape
    if shape.is_dynamic:
        return int(shape.max[2])
    return int(shape[2])


@trtp.register(PLUGIN_ID)
def facility_location_desc(features: trtp.TensorDesc, k: int) -> trtp.TensorDesc:
    if features.ndim != contract.INPUT_RANK:
        raise ValueError(f"{PLUGIN_ID}: features must be (B, T, S, C); got rank {features.ndim}")
    if k < 1:
        raise ValueError(f"{PLUGIN_ID}: k={k} must be >= 1")
    se = features.shape_expr
    return trtp.from_shape_expr((se[0], se[1], k), dtype=trt.int32)


@trtp.autotune(PLUGIN_ID)
def facility_location_autotune(
    features: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]
) -> List[trtp.AutoTuneCombination]:
    # Position 0 (features): FP32 or FP16; position 1 (indices): INT32. Linear layout only.
    return [trtp.AutoTuneCombination("FP32|FP16, INT32", "LINEAR")]


@trtp.aot_impl(PLUGIN_ID)
def facility_location_aot(
    features: trtp.TensorDesc, k: int, outputs: Tuple[trtp.TensorDesc], tactic: int
) -> Tuple[bytes, bytes, trtp.KernelLaunchParams, trtp.SymExprs]:
    import torch

    from plugins.triton_selection import compile_selection_kernel

    dtype = "fp16" if features.dtype == trt.float16 else "fp32"
    major, minor = torch.cuda.get_device_capability()
    ck = compile_selection_kernel(major * 10 + minor, dtype=dtype, tile_size=_tile_block_dim(features))
    se = features.shape_expr
    launch = trtp.KernelLaunchParams()
    launch.grid_x = se[0] * se[1]  # one program per tile
    launch.block_x = ck.block_x
    launch.shared_mem = ck.shared_mem
    # Kernel parameters: (features, S, C, K, indices) = inputs, these extra int32 args, outputs.
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(se[2]), trtp.SymInt32(se[3]), trtp.SymInt32(k)])
    return ck.name.encode(), ck.ptx.encode(), launch, extra


@trtp.impl(PLUGIN_ID)
def facility_location_jit(features: trtp.Tensor, k: int, outputs: Tuple[trtp.Tensor], stream: int) -> None:
    import torch

    from plugins.triton_selection import facility_location_triton

    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        x = torch.as_tensor(features, device="cuda")
        out = torch.as_tensor(outputs[0], device="cuda")
        facility_location_triton(x, k, out=out)
