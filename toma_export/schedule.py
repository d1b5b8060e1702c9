"""``StepSchedule``: the one per-generation step state every path uses.

A denoising generation is a run of model calls (steps). ToMA selects destinations on steps 0, n,
2n, ... (``recompute_every = n``) and carries them between steps; a new generation starts at
step 0 with nothing carried. This object owns exactly that: the step count, the recompute
decision, the carried destinations and the new-generation rule. Eager hooks, the graph program,
the runtime wrapper, ``verify``, ``bench`` and serving all hold one (serving: one per request).

Two ways to read the decision, one state:

- Python (``recompute_due``, ``carry``): eager, program and wrapper calls; reuse steps skip the
  selection entirely.
- Traced (``carry`` while ``torch.compiler.is_compiling()``): the step count is a CPU tensor and
  the decision a ``torch.where`` between fresh and carried destinations, so a compiled model has
  no graph break, no guard on the step and no recompile per step. Selection then runs every step
  (a few per mille of a block's FLOPs) and only scheduled steps' picks are kept.
"""

from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch

from toma_export.errors import ToMAConfigError


class StepSchedule:
    """Step count, recompute decision and carried destinations of one generation."""

    def __init__(self, recompute_every: int):
        if isinstance(recompute_every, bool) or not isinstance(recompute_every, int) or recompute_every < 1:
            raise ToMAConfigError(f"recompute_every={recompute_every!r} must be an int >= 1 (1 = select every step).")
        self.recompute_every = recompute_every
        #: Steps done in this generation; a CPU tensor so traced code reads it as data, not a constant.
        with torch.inference_mode(False):  # made during an inference-mode call, still resettable outside one
            self.counter = torch.zeros((), dtype=torch.int64)
        #: Destinations carried between steps, by the caller's key (group layout and batch).
        self.carried: dict[Hashable, torch.Tensor] = {}
        #: Selection runs over the schedule's lifetime (not reset): tests and reports count reuse with it.
        self.selections = 0
        #: The same count for selections kept inside compiled code (``carry`` while compiling): a CPU
        #: tensor the compiled graph adds to in place, as Python counters do not run there.
        with torch.inference_mode(False):
            self.compiled_selections = torch.zeros((), dtype=torch.int64)
        self.generations = 0
        self._last_timestep: float | None = None

    # -- the generation ------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return int(self.counter)

    @property
    def recompute_due(self) -> bool:
        return self.step % self.recompute_every == 0

    def reset(self) -> None:
        """Start a new generation: step 0, nothing carried."""
        self.counter.zero_()
        self.carried.clear()
        self._last_timestep = None
        self.generations += 1

    def advance(self) -> None:
        """One step done (in place: traced code may call it)."""
        self.counter.add_(1)

    def observe_timestep(self, t: float | None) -> None:
        """New-generation rule for callers without a pipeline hook (engine wrappers, servers).

        Diffusers schedules run timesteps downwards, so a timestep that does not decrease starts a
        new generation. ``None`` (unknown, e.g. a device tensor not worth a sync) changes nothing.
        """
        if t is not None and self._last_timestep is not None and t >= self._last_timestep:
            self.reset()
        self._last_timestep = t

    # -- destinations --------------------------------------------------------------------------------
    def carry(self, key: Hashable, select: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The destinations for ``key`` this step: fresh from ``select()`` on scheduled steps (or
        when none are carried for ``key``), the carried ones otherwise."""
        if torch.compiler.is_compiling():
            fresh = select()
            held = self.carried.get(key)
            if held is None:
                self.carried[key] = fresh
                self.compiled_selections.add_(1)
                return fresh
            due = torch.remainder(self.counter, self.recompute_every) == 0
            self.compiled_selections.add_(due.to(torch.int64))
            out = torch.where(due.to(fresh.device), fresh, held)
            self.carried[key] = out
            return out
        held = self.carried.get(key)
        if held is None or self.recompute_due:
            held = self.carried[key] = select()
            self.selections += 1
        return held

    def carried_list(self, keys: Sequence[Hashable]) -> list[torch.Tensor] | None:
        """Carried destinations for ``keys`` in order, or None when a key has none (select then)."""
        out = [self.carried.get(k) for k in keys]
        return None if any(t is None for t in out) else out  # type: ignore[return-value]

    def store(self, keys: Sequence[Hashable], tensors: list[torch.Tensor]) -> None:
        """Carry ``tensors`` (fresh from an engine's select variant) under ``keys``."""
        self.carried.update(zip(keys, tensors))
        self.selections += 1

    def needs_selection(self, keys: Sequence[Hashable]) -> bool:
        """Whether an engine step must run its select variant (scheduled, or nothing carried)."""
        return self.recompute_due or self.carried_list(keys) is None
