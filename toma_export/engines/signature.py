"""The flat input order of an exported denoiser, recorded in a manifest and applied at run time.

Exported graphs take the model's keyword arguments flattened (pytree order, nested dicts such as
SDXL's ``added_cond_kwargs`` included). The tree spec is stored as text so a runtime can flatten
a pipeline's call the same way, and name what does not fit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree

from toma_export.errors import ToMAError


def dump_spec(example_kwargs: dict[str, Any]) -> str:
    _, spec = pytree.tree_flatten(((), example_kwargs))
    return pytree.treespec_dumps(spec)


def _key_order(spec: pytree.TreeSpec) -> list[str]:
    # ``TreeSpec.child(i)`` (torch >= 2.9); ``children_specs`` is deprecated there (FutureWarning).
    kwargs_spec = spec.child(1) if hasattr(spec, "child") else spec.children_specs[1]
    return list(kwargs_spec.context)


def flatten_inputs(kwargs: dict[str, Any], spec_text: str) -> list[torch.Tensor]:
    """``kwargs`` as the exported graph's flat tensor inputs; clear errors for missing/extra ones."""
    spec = pytree.treespec_loads(spec_text)
    order = _key_order(spec)
    extra = [k for k, v in kwargs.items() if k not in order and v is not None]
    if extra:
        raise ToMAError(f"this artifact was built without the inputs {extra}; rebuild with them or drop them.")
    missing = [k for k in order if k not in kwargs]
    if missing:
        raise ToMAError(f"this artifact needs the inputs {missing}.")
    flat, got = pytree.tree_flatten(((), {k: kwargs[k] for k in order}))
    if got != spec:
        raise ToMAError(f"inputs do not have the structure the artifact was built with: expected {spec}, got {got}")
    return [x for x in flat if isinstance(x, torch.Tensor)]
