"""``toma-export inspect ARTIFACT``: what an artifact folder holds, as text (model reports live in
:mod:`toma_export.graph.inspect`; artifacts are engine-side, so their formatting is here)."""

from __future__ import annotations

from typing import Any

from toma_export.engines.artifact import read_manifest
from toma_export.graph.inspect import format_config

__all__ = ["format_artifact"]


def format_artifact(folder: Any) -> str:
    """What an artifact folder holds (``toma-export inspect ARTIFACT``): model, full config, backend,
    precision, shapes, variants and destination groups. The manifest's schema and paths are checked;
    file hashes are not (``verify`` and ``run`` check them before anything runs)."""
    m = read_manifest(folder, verify_files=False)
    extra, shapes, model = m.extra, m.shapes, m.model
    lines = [f"artifact {folder}"]
    lines.append(f"model: {model.name} ({model.class_name}, weights {model.weights_hash[:12]})")
    lines.append(f"backend: {m.backend}, precision {extra.precision}, selection {extra.selection}")
    lines.append("config: " + format_config(m.config.to_dict()))
    batch = f"any batch 1..{shapes.batch_max or 'n'} (built at {shapes.batch})" if shapes.dynamic_batch \
        else f"batch {shapes.batch}"
    lines.append(f"shapes: {shapes.height}x{shapes.width} px, {batch}; inputs {shapes.inputs}")
    if extra.input_dtypes:
        lines.append(f"input dtypes: {', '.join(extra.input_dtypes)}")
    lines.append("variants: " + ", ".join(f"{k} ({v})" for k, v in extra.variants.items()))
    if extra.groups:
        lines.append("groups: " + ", ".join(f"{t} tiles x {k} destinations" for t, k in extra.groups))
    if extra.sites:
        lines.append(f"sites: {len(extra.sites)} merged (" + ", ".join(sorted({s.kind for s in extra.sites})) + ")")
    if extra.build_seconds:
        lines.append("build seconds: " + ", ".join(f"{k} {v}" for k, v in extra.build_seconds.items()))
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(m.versions.items())))
    lines.append(f"files: {len(m.files)} (hashes checked by verify/run)")
    return "\n".join(lines)
