"""Capture: ``torch.export`` of a diffusers denoiser with its own keyword arguments.

The pass works on the lifted ATen graph (parameters are placeholders), so a rewritten graph can be
run directly with the same weights and re-exported without copying them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.export._tree_utils import reorder_kwargs
from torch.export.graph_signature import InputKind

from toma_export.errors import UnsupportedModelError


@dataclass
class Captured:
    """An exported model plus what is needed to call its graph with flat tensors."""

    ep: ExportedProgram
    example_kwargs: dict[str, Any]

    @property
    def lifted(self) -> list[torch.Tensor]:
        """Parameters, buffers and constants in placeholder order (before the user inputs)."""
        out = []
        for spec in self.ep.graph_signature.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                continue
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in self.ep.state_dict:
                out.append(self.ep.state_dict[spec.target])
            elif spec.target in self.ep.constants:
                out.append(self.ep.constants[spec.target])  # type: ignore[arg-type]
            else:
                raise UnsupportedModelError(f"cannot bind lifted input {spec.arg} ({spec.kind}) of the exported model")
        return out

    @property
    def user_input_names(self) -> list[str]:
        return list(self.ep.graph_signature.user_inputs)  # type: ignore[arg-type]

    def flatten(self, kwargs: dict[str, Any]) -> list[Any]:
        """The model's keyword arguments as the graph's flat user inputs (checked against the spec).

        Every pytree leaf is a graph input, ``None`` and constants included (export specialises them).
        """
        in_spec = self.ep.call_spec.in_spec
        flat, spec = pytree.tree_flatten(((), reorder_kwargs(kwargs, in_spec) if in_spec else kwargs))
        if in_spec is not None and spec != in_spec:
            raise ValueError(
                f"arguments do not match the captured call: expected {in_spec}, got {spec}; "
                "pass the same keyword arguments as the example (rewrite again for other ones)."
            )
        return flat

    def unflatten(self, flat_out: list[Any]) -> Any:
        return pytree.tree_unflatten(list(flat_out), self.ep.call_spec.out_spec)


def capture(model: torch.nn.Module, example_kwargs: dict[str, Any]) -> Captured:
    """``torch.export`` (non-strict) of ``model(**example_kwargs)``; shapes are static."""
    with torch.no_grad():
        ep = torch.export.export(model, (), dict(example_kwargs), strict=False)
    return Captured(ep, dict(example_kwargs))
