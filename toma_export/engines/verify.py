"""Verify an artifact: engine vs eager ToMA and vs the unmerged model on the same fresh inputs.

``toma-export verify`` (:mod:`toma_export.cli.engines`) prints the rows; ``toma-export demo`` and the
tests call :func:`verify_artifact` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import toma_export
from toma_export.config import ToMAConfig
from toma_export.errors import ToMAConfigError
from toma_export.input_rules import MAX_SEED, MAX_STEPS
from toma_export.engines.build import require_same_model
from toma_export.engines.load import load_artifact
from toma_export.models.inputs import example_inputs
from toma_export.models.outputs import first_output
from toma_export.models.registry import load_model
from toma_export.schedule import StepSchedule
from toma_export.vocabulary import VERIFY_TOLERANCES

__all__ = ["verify_artifact"]


def _reference_outputs(net: torch.nn.Module, config: ToMAConfig, inputs: list[dict[str, Any]]) -> list[torch.Tensor]:
    """ToMA's reference outputs over the steps: eager ``toma_export.apply`` for every family (the
    hand-written hook adapters for UNets and Flux.1-style transformers; for the others the graph pass
    behind a diffusers hook, ``toma_export/eager/graph_hook.py``), one generation from step 0, removed
    afterwards so ``net`` is the unmerged model again."""
    toma_export.apply(net, config)
    try:
        return [first_output(net(**kw)) for kw in inputs]
    finally:
        toma_export.remove(net)


def verify_artifact(
    folder: str | Path, *, steps: int = 3, seed: int = 1234, tol: float | None = None, model: str | Path | None = None
) -> tuple[bool, list[dict[str, Any]]]:
    """Engine vs eager ToMA and vs the unmerged model over ``steps`` steps of fresh inputs, both in the
    artifact's dtype (``extra.precision``): the model is cast to it as ``build`` cast it. Inputs have the
    artifact's batch, resolution and frames (``shapes``).

    Each step gets new random inputs, so reuse steps run the engine's reuse variant on features
    the destinations were not selected from, exactly as eager does. ``tol`` (max abs against eager
    ToMA) defaults to :data:`toma_export.vocabulary.VERIFY_TOLERANCES` of the artifact's precision. ``model``: where the model is
    now (a local folder or Hub id), when it moved since the build; its identity must still match.
    Returns (ok, rows).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ToMAConfigError(f"--steps {steps!r}: verify compares 1 to {MAX_STEPS} steps; use e.g. --steps 3.")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ToMAConfigError(f"--seed {seed!r} must be an int in [0, 2**63); use e.g. --seed 1234.")
    if tol is not None and not (isinstance(tol, (int, float)) and 0 <= tol < float("inf")):
        raise ToMAConfigError(f"--tol {tol!r} must be a finite number >= 0, e.g. --tol 1e-3.")
    from toma_export.engines.build import cast_model
    from toma_export.engines.load import precision_dtype

    from toma_export.engines.consistency import check_shapes_fit_model
    from toma_export.engines.model_source import source_shell

    loaded = load_artifact(folder)
    m = loaded.manifest
    dtype = precision_dtype(m)
    tol = VERIFY_TOLERANCES[m.extra.precision] if tol is None else float(tol)
    shell, source = source_shell(m, model)  # class and config match before any weights are read
    check_shapes_fit_model(folder, m, shell)
    net = load_model(source.name, revision=source.load_revision, variant=source.variant, subfolder=source.subfolder,
                     seed=m.extra.seed)
    net = cast_model(net, dtype)
    require_same_model(m, net)
    config, shapes = m.config, m.shapes
    inputs = [
        example_inputs(net, batch=shapes.batch, height=shapes.height, width=shapes.width, frames=shapes.frames,
                       seed=seed + i, dtype=dtype)
        for i in range(steps)
    ]
    with torch.no_grad():
        plain = [first_output(net(**kw)) for kw in inputs]
        eager = _reference_outputs(net, config, inputs)
        schedule = StepSchedule(config.recompute_every)
        rows: list[dict[str, Any]] = []
        for i, kw in enumerate(inputs):
            before = loaded.runner.selections
            out = loaded.runner(kw, schedule)
            schedule.advance()
            single = "single" in loaded.runner.variants
            variant = "single" if single else ("select" if loaded.runner.selections > before else "reuse")
            out = out.float()
            d_eager, d_plain = (out - eager[i].float()).abs(), (out - plain[i].float()).abs()
            rows.append(
                dict(step=i, variant=variant, max_vs_eager=d_eager.max().item(), mean_vs_eager=d_eager.mean().item(),
                     max_vs_unmerged=d_plain.max().item(), mean_vs_unmerged=d_plain.mean().item())
            )
    for r in rows:
        r["tol"] = tol
    return all(r["max_vs_eager"] <= tol for r in rows), rows

