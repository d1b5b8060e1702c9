"""ONNX export of a (rewritten) exported program.

The toma custom ops are lowered before translation: merge/unmerge always to standard ATen ops
(so to Gather/MatMul/Softmax...), selection either unrolled (``selection="unrolled"``: the fixed
trip count becomes k copies of ArgMax/Where/...) or kept as one ``toma::FacilityLocation`` plugin
node (``selection="plugin"``) for TensorRT. Complex values (RoPE tables) become real pairs
(:mod:`toma_export.engines.complex_lowering`). The graph is then cleaned and constant-folded, and
weights go to one external-data file when the model is large.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import torch

from toma_export.engines.complex_lowering import lower_complex
from toma_export.errors import ToMAError
from toma_export.quiet import library_noise
from toma_export.vocabulary import Selection
EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights above which they go to an external file
PROTO_LIMIT = (1 << 31) - (1 << 26)  # a single protobuf holds < 2 GiB; leave room for the graph
WEIGHTS_FILE = "weights.bin"


def register_plugin_schema() -> None:
    """Declare ``toma::FacilityLocation`` to ONNX (idempotent), so graphs holding it check and export."""
    from onnx import defs

    from plugins import contract as c

    if defs.has(c.ONNX_OP_TYPE, c.ONNX_DOMAIN):
        return
    param = defs.OpSchema.FormalParameter
    defs.register_schema(
        defs.OpSchema(
            c.ONNX_OP_TYPE,
            c.ONNX_DOMAIN,
            c.ONNX_DOMAIN_VERSION,
            doc="Greedy facility-location destinations per tile (toma-export selection plugin).",
            inputs=[param(c.ONNX_INPUT_NAME, "T")],
            outputs=[param(c.ONNX_OUTPUT_NAME, "tensor(int32)")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "tile features (B, T, S, C)")],
            attributes=[defs.OpSchema.Attribute(c.ONNX_ATTR_K, defs.OpSchema.AttrType.INT, "destinations per tile")],
        )
    )


def _plugin_translation() -> Callable[..., Any]:
    """Translation of ``toma::facility_location`` to the plugin node (int32 out, cast to int64)."""
    import onnxscript
    from onnxscript import opset18 as op

    from plugins import contract

    register_plugin_schema()
    toma = onnxscript.values.Opset(contract.ONNX_DOMAIN, contract.ONNX_DOMAIN_VERSION)

    def facility_location_plugin(features: Any, k: int) -> Any:
        return op.Cast(toma.FacilityLocation(features, k=k), to=7)  # INT64, as the torch op returns

    return facility_location_plugin


def lower_toma_ops(ep: torch.export.ExportedProgram, selection: Selection) -> torch.export.ExportedProgram:
    """Decompose the toma custom ops to ATen, keeping selection opaque when it is to be a plugin."""
    from toma_export.graph import decompositions

    table = dict(decompositions())
    if selection == "plugin":
        table.pop(torch.ops.toma.facility_location.default, None)
    return ep.run_decompositions(table)


def promote_mixed_dtypes(ep: torch.export.ExportedProgram) -> int:
    """Cast the inputs of ATen ops that promote mixed float dtypes (``cat``/``stack``/``where`` of fp16 and
    fp32, as SDXL's ``add_embedding`` concatenates fp16 text embeddings with fp32 time features) to
    the dtype the op produces; returns how many casts it inserted.

    torch promotes such inputs implicitly; ONNX ``Concat`` needs one type, and the exporter does not
    insert the cast, so an fp16/bf16 graph would fail to load ("Type parameter (T) of Optype (Concat)
    bound to different types"). The casts are exactly what eager does, so the graph stays exact.
    """
    aten = torch.ops.aten
    promoting = {aten.cat.default, aten.stack.default, aten.concat.default}
    graph = ep.graph_module.graph
    inserted = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in promoting:
            continue
        out = node.meta.get("val")
        if not isinstance(out, torch.Tensor) or not out.dtype.is_floating_point:
            continue
        parts = list(node.args[0])
        changed = False
        for i, part in enumerate(parts):
            val = part.meta.get("val") if isinstance(part, torch.fx.Node) else None
            if isinstance(val, torch.Tensor) and val.dtype != out.dtype:
                with graph.inserting_before(node):
                    cast = graph.call_function(torch.ops.prims.convert_element_type.default, (part, out.dtype))
                cast.meta["val"] = val.to(out.dtype)
                parts[i], changed = cast, True
                inserted += 1
        if changed:
            node.args = (parts, *node.args[1:])
    if inserted:
        ep.graph_module.recompile()
    return inserted


def int64_indices(ep: torch.export.ExportedProgram) -> int:
    """Cast int32 index tensors of ``aten.index.Tensor`` to int64; returns how many casts it inserted.

    torch indexes with int32 tensors (Z-Image looks its RoPE tables up with int32 position ids); the
    exporter maps the op to ONNX ``GatherND``, whose indices must be int64, and only a graph small
    enough for constant folding hides the difference. The cast changes no value.
    """
    aten = torch.ops.aten
    graph = ep.graph_module.graph
    inserted = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.index.Tensor or len(node.args) < 2:
            continue
        indices = list(node.args[1])  # type: ignore[arg-type]
        for i, idx in enumerate(indices):
            val = idx.meta.get("val") if isinstance(idx, torch.fx.Node) else None
            if isinstance(val, torch.Tensor) and val.dtype == torch.int32:
                with graph.inserting_before(node):
                    cast = graph.call_function(torch.ops.prims.convert_element_type.default, (idx, torch.int64))
                cast.meta["val"] = val.to(torch.int64)
                indices[i] = cast
                inserted += 1
        node.args = (node.args[0], indices, *node.args[2:])
    if inserted:
        ep.graph_module.recompile()
    return inserted


def _replace(node: torch.fx.Node, new: torch.fx.Node) -> bool:
    """Route ``node``'s users to ``new`` and erase it, unless it feeds the graph output (the program's
    signature names that node). Returns whether it was replaced."""
    if any(u.op == "output" for u in node.users):
        return False
    node.replace_all_uses_with(new)
    node.graph.erase_node(node)
    return True


def drop_noop_squeezes(ep: torch.export.ExportedProgram) -> int:
    """Remove ``aten.squeeze`` nodes none of whose dims has size 1; returns how many it removed.

    In torch, squeezing a dim whose size is not 1 returns the tensor unchanged (PixArt squeezes its
    ``(B, N, C)`` output on dim 1); the exporter emits ONNX ``Squeeze`` on that axis, which ONNX Runtime
    refuses to load. Only squeezes that change nothing are removed; a dim of unknown (symbolic) size is
    left to the exporter.
    """
    aten = torch.ops.aten
    graph = ep.graph_module.graph
    removed = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.squeeze.dim, aten.squeeze.dims):
            continue
        src = node.args[0]
        val = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
        if not isinstance(val, torch.Tensor) or val.ndim == 0:
            continue
        dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        sizes = [val.shape[d] for d in dims]  # type: ignore[index]
        if all(isinstance(n, int) and n != 1 for n in sizes) and _replace(node, src):  # type: ignore[arg-type]
            removed += 1
    if removed:
        ep.graph_module.recompile()
    return removed


def bool_selects_as_logic(ep: torch.export.ExportedProgram) -> int:
    """Rewrite boolean ``masked_fill`` / ``where`` as logical ops; returns how many it rewrote.

    The exporter maps them to ONNX ``Where``, for which ONNX Runtime's CPU provider has no boolean
    kernel (HunyuanVideo and Allegro fill their boolean attention masks). On booleans the select is
    exact logic: ``masked_fill(x, m, False) = x & ~m``, ``masked_fill(x, m, True) = x | m``,
    ``where(c, a, b) = (c & a) | (~c & b)``.
    """
    aten = torch.ops.aten
    graph = ep.graph_module.graph
    rewritten = 0

    def call(target: Any, *args: torch.fx.Node) -> torch.fx.Node:
        out = graph.call_function(target, args)
        out.meta["val"] = target(*(a.meta["val"] for a in args))  # fake values: shapes broadcast as torch does
        return out

    for node in list(graph.nodes):
        val = node.meta.get("val")
        if node.op != "call_function" or not isinstance(val, torch.Tensor) or val.dtype != torch.bool:
            continue
        if any(u.op == "output" for u in node.users):
            continue  # see _replace: a graph output keeps its node
        args = node.args
        tensors = [a.meta.get("val") if isinstance(a, torch.fx.Node) else None for a in args[:3]]
        with graph.inserting_before(node):
            if node.target is aten.masked_fill.Scalar and tensors[0] is not None and tensors[0].dtype == torch.bool:
                x, mask, value = args
                if value:
                    new = call(aten.logical_or.default, x, mask)  # type: ignore[arg-type]
                else:
                    new = call(aten.logical_and.default, x, call(aten.logical_not.default, mask))  # type: ignore[arg-type]
            elif node.target is aten.where.self and all(t is not None and t.dtype == torch.bool for t in tensors):
                c, a, b = args
                new = call(aten.logical_or.default, call(aten.logical_and.default, c, a),  # type: ignore[arg-type]
                           call(aten.logical_and.default, call(aten.logical_not.default, c), b))  # type: ignore[arg-type]
            else:
                continue
        rewritten += _replace(node, new)
    if rewritten:
        ep.graph_module.recompile()
    return rewritten


def _export_failure(e: BaseException) -> str:
    """The ONNX exporter's failure in one message: its step, the underlying error, and what to do."""
    first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    cause = e.__cause__ or e.__context__
    reason = f" ({type(cause).__name__}: {str(cause).strip().splitlines()[0][:300]})" if cause and str(cause).strip() else ""
    return (f"the ONNX exporter (torch.onnx, dynamo) could not export this model: {first}{reason}. The graph uses an "
            "op or a value the exporter cannot lower to ONNX opset ops. Build with `--backend inductor` "
            "(AOTInductor) instead, or run the model eagerly with toma_export.apply.")


def export_onnx(
    ep: torch.export.ExportedProgram,
    path: str | Path,
    *,
    selection: Selection = "unrolled",
    opset: int = 18,
    external_data: bool | None = None,
    bf16_in_fp32: bool = True,
) -> Path:
    """Write ``ep`` as ONNX at ``path`` (plus ``weights.bin`` beside it when external).

    ``bf16_in_fp32``: a bf16 graph keeps bf16 weights, inputs and outputs, but every op computes in
    fp32 between casts (:func:`bf16_compute_in_fp32`), since opset-18 ops such as Conv do not admit
    bf16 and ONNX Runtime's CPU provider has few bf16 kernels. Off for TensorRT (native bf16).
    """
    import onnx

    if selection not in ("unrolled", "plugin"):
        raise ToMAError(f"selection={selection!r}: use 'unrolled' (standard ops) or 'plugin' (TensorRT node).")
    path = Path(path)
    with library_noise():  # torch's LeafSpec deprecation, raised inside its own pytree copies
        lowered = lower_toma_ops(ep, selection)
    lower_complex(lowered)  # a copy: complex RoPE tables (Qwen-Image) become real pairs
    promote_mixed_dtypes(lowered)
    int64_indices(lowered)
    drop_noop_squeezes(lowered)
    bool_selects_as_logic(lowered)
    table: dict[Any, Any] | None = (
        {torch.ops.toma.facility_location.default: _plugin_translation()} if selection == "plugin" else None
    )
    try:
        with library_noise():  # the exporter's torchvision-op lines and LeafSpec deprecation (toma_export/quiet.py)
            program = torch.onnx.export(
                lowered, dynamo=True, optimize=True, opset_version=opset, custom_translation_table=table, verbose=False
            )
    except Exception as e:  # torch.onnx's ConversionError and what it wraps: one ToMAError naming the cause
        raise ToMAError(_export_failure(e)) from e
    if program is None:
        raise ToMAError("the ONNX exporter returned no program")
    weight_bytes = sum(t.numel() * t.element_size() for t in ep.state_dict.values())
    if external_data is None:
        external_data = weight_bytes > EXTERNAL_DATA_THRESHOLD
    path.parent.mkdir(parents=True, exist_ok=True)
    if weight_bytes > PROTO_LIMIT:
        # One protobuf cannot hold > 2 GiB: save straight from the exporter's IR with external data
        # (the exporter's own optimiser already folded constants).
        program.save(str(path), external_data=True)
        onnx.checker.check_model(str(path))
        return path
    model = cleanup(program.model_proto)
    if bf16_in_fp32 and _has_bf16(model):
        model = bf16_compute_in_fp32(model)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=WEIGHTS_FILE)
        onnx.checker.check_model(str(path))
    else:
        onnx.checker.check_model(model)
        onnx.save_model(model, str(path))
    return path


def cleanup(model: Any) -> Any:
    """Fold constants and drop dead nodes (onnx-graphsurgeon); plugin nodes pass through untouched."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.fold_constants(error_ok=True)  # a subgraph it cannot evaluate stays unfolded
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    out.functions.extend(f for f in model.functions if f.domain != "" and f.name not in {g.name for g in out.functions})
    return out



#: Ops left as they are in a bf16 graph: their output type is an attribute, and ONNX Runtime's CPU
#: provider has bf16 kernels for them.
_TYPED_BY_ATTRIBUTE = {"Cast", "CastLike", "Constant", "ConstantOfShape"}


def _has_bf16(model: Any) -> bool:
    from onnx import TensorProto

    bf16 = TensorProto.BFLOAT16
    return any(t.data_type == bf16 for t in model.graph.initializer) or any(
        v.type.tensor_type.elem_type == bf16 for v in model.graph.input
    )


def bf16_compute_in_fp32(model: Any) -> Any:
    """Every op with a bf16 input or output computes in fp32: its bf16 inputs are cast up (exact) and
    its bf16 outputs cast back down (round to nearest even), so values between ops are bf16 as in
    eager bf16, whose CPU kernels also accumulate in fp32 and round each op's output. Weights stay
    bf16 in the file; inputs and outputs of the graph stay bf16.

    Why: ONNX opset 18 does not admit bf16 for Conv (and others), and ONNX Runtime's CPU provider has
    few bf16 kernels, so a plain bf16 graph does not load ("Type 'tensor(bfloat16)' of input parameter
    ... of operator (Conv) ... is invalid").
    """
    from onnx import TensorProto, helper, shape_inference

    bf16, f32 = TensorProto.BFLOAT16, TensorProto.FLOAT
    inferred = shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    nodes: list[Any] = []
    up: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in _TYPED_BY_ATTRIBUTE or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if name and types.get(name) == bf16:
                if name not in up:
                    up[name] = f"{name}__fp32"
                    nodes.append(helper.make_node("Cast", [name], [up[name]], to=f32, name=f"{name}__cast_up"))
                node.input[i] = up[name]
        down = []
        for i, name in enumerate(node.output):
            if name and types.get(name) == bf16:
                node.output[i] = f"{name}__fp32out"
                down.append(helper.make_node("Cast", [node.output[i]], [name], to=bf16, name=f"{name}__cast_down"))
        nodes.append(node)
        nodes.extend(down)
    del model.graph.node[:]
    model.graph.node.extend(nodes)  # value names keep their bf16 types (the casts down produce them)
    return model
