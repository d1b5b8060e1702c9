"""The main output tensor of a denoiser call, whatever container its class returns it in."""

from __future__ import annotations

from typing import Any

import torch


def first_output(out: Any) -> torch.Tensor:
    """The main output of a denoiser call: a tensor, the first item of a tuple, a diffusers output's
    ``sample``; a per-sample list (Z-Image returns one tensor per batch element) gives its first sample."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return first_output(out[0])
    return first_output(out[0] if hasattr(out, "__getitem__") else out.sample)
