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
from toma_export.engines.build import require_same_model
from toma_export.engines.load import load_artifact
from toma_export.models.inputs import example_inputs
from toma_export.models.registry import load_model
from toma_export.schedule import StepSchedule

__all__ = ["verify_artifact"]


def verify_artifact(folder: str | Path, *, steps: int = 3, seed: int = 1234, tol: float = 1e-3) -> tuple[bool, list[dict[str, Any]]]:
    """Engine vs eager ToMA and vs the unmerged model over ``steps`` steps of fresh inputs.

    Each step gets new random inputs, so reuse steps run the engine's reuse variant on features
    the destinations were not selected from, exactly as eager does. Returns (ok, rows).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ToMAConfigError(f"--steps {steps!r}: verify compares at least one step; use e.g. --steps 3.")
    loaded = load_artifact(folder)
    m = loaded.manifest
    model = load_model(m.model["name"], seed=int(m.extra.get("seed", 0)))
    require_same_model(m, model)
    config = ToMAConfig.from_dict(m.config)
    shapes = m.shapes
    inputs = [
        example_inputs(model, batch=shapes["batch"], height=shapes["height"], width=shapes["width"], seed=seed + i)
        for i in range(steps)
    ]
    with torch.no_grad():
        plain = [model(**kw)[0] for kw in inputs]
        toma_export.apply(model, config)
        try:
            eager = [model(**kw)[0] for kw in inputs]
        finally:
            toma_export.remove(model)
        schedule = StepSchedule(config.recompute_every)
        rows = []
        for i, kw in enumerate(inputs):
            before = loaded.runner.selections
            out = loaded.runner(kw, schedule)
            schedule.advance()
            single = "single" in loaded.runner.variants
            variant = "single" if single else ("select" if loaded.runner.selections > before else "reuse")
            d_eager, d_plain = (out - eager[i]).abs(), (out - plain[i]).abs()
            rows.append(
                dict(step=i, variant=variant, max_vs_eager=d_eager.max().item(), mean_vs_eager=d_eager.mean().item(),
                     max_vs_unmerged=d_plain.max().item(), mean_vs_unmerged=d_plain.mean().item())
            )
    return all(r["max_vs_eager"] <= tol for r in rows), rows

