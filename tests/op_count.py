"""Ad-hoc op counting for the hot-path hygiene tests: every ATen op of a forward, by where it runs.

Not a project tool: tests use it to keep host work inside a forward at zero (docs/DESIGN.md, "Step state").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
_COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default}


@dataclass
class OpCounts:
    ops: int = 0
    host_to_device: int = 0  # a CPU tensor copied to the model's device (a blocking copy: a sync)
    device_reads: int = 0  # ``_local_scalar_dense`` on a device tensor (``.item()``, ``int(t)``: a sync)
    cpu_ops: int = 0  # ops whose tensors are all on the CPU
    names: Counter = field(default_factory=Counter)  # the host-side ops, by name

    def host_work(self) -> tuple[int, int, int]:
        return self.host_to_device, self.device_reads, self.cpu_ops


class CountOps(TorchDispatchMode):
    """Counts ops while active; ``counts`` holds the result."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = OpCounts()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        c = self.counts
        c.ops += 1
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        in_dev = {t.device.type for t in ins}
        out_dev = {t.device.type for t in outs}
        if func is aten._local_scalar_dense.default:
            if in_dev - {"cpu"}:
                c.device_reads += 1
                c.names[str(func)] += 1
            else:
                c.cpu_ops += 1
                c.names[str(func)] += 1
        elif func in _COPIES and "cpu" in in_dev and (out_dev | in_dev) - {"cpu"}:
            c.host_to_device += 1
            c.names[str(func)] += 1
        elif (ins or outs) and in_dev | out_dev == {"cpu"}:
            c.cpu_ops += 1
            c.names[str(func)] += 1
        return out


def count_forward(model: torch.nn.Module, kwargs: dict) -> OpCounts:
    with torch.no_grad(), CountOps() as mode:
        model(**kwargs)
    return mode.counts
