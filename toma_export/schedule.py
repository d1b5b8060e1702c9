"""``StepSchedule``: the one per-generation step state every path uses.

A denoising generation is a run of model calls (steps). ToMA selects destinations on steps 0, n,
2n, ... (``recompute_every = n``) and carries them between steps; a new generation starts at
step 0 with nothing carried. This object owns exactly that, on the host:

- the step count, a Python int, read only by host code (never inside traced code: a compiled
  graph that read it would be guarded on its value and recompiled every step);
- the decision, :attr:`selecting`, a Python bool fixed by :meth:`begin` before the step's
  computation runs. Traced code may read it: ``torch.compile`` then specialises on it, so a model
  has exactly two graphs, select and reuse, and the reuse graph holds no selection;
- the carried destinations, in persistent device buffers (one per key: group layout and batch)
  that a select step writes in place and reuse steps read. They outlive :meth:`reset` (only their
  validity is dropped), so CUDA graphs and ``torch.compile`` see the same tensors every step; they
  are marked static for inductor's CUDA-graph trees.

Users: eager hooks (:class:`~toma_export.eager.state.MergeContext`, per site through :meth:`carry`),
and every two-variant runner through :func:`run_step` (``ToMAProgram``, the artifact runner, bench,
serving, the CUDA-graph runner).
"""

from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch

from toma_export.errors import ToMAConfigError

#: A variant on flat tensors: inputs in, outputs out (select: outputs then one destination per group).
Variant = Callable[[list[torch.Tensor]], "Sequence[torch.Tensor]"]


class StepSchedule:
    """Step count, recompute decision and carried destinations of one generation."""

    def __init__(self, recompute_every: int):
        if isinstance(recompute_every, bool) or not isinstance(recompute_every, int) or recompute_every < 1:
            raise ToMAConfigError(f"recompute_every={recompute_every!r} must be an int >= 1 (1 = select every step).")
        self.recompute_every = recompute_every
        #: Steps done in this generation (host only).
        self.step = 0
        #: Whether the current step selects: set by :meth:`begin` on the host before the step runs.
        self.selecting = True
        #: Persistent destination buffers by the caller's key (group layout and batch).
        self.buffers: dict[Hashable, torch.Tensor] = {}
        #: Keys whose buffer holds this generation's destinations.
        self.valid: set[Hashable] = set()
        self._fresh: list[Hashable] = []  # keys written during the current step
        self._expected: list[Hashable] = []  # keys the current step may use (``begin``)
        #: Keys reserved but left unwritten by a selecting step: no site of that shape uses them.
        self.idle: set[Hashable] = set()
        #: Selections over the schedule's lifetime (not reset): tests and reports count reuse with it.
        self.selections = 0
        self.generations = 0
        self._last_timestep: float | None = None

    # -- the generation (host) -----------------------------------------------------------------------
    @property
    def recompute_due(self) -> bool:
        """Whether this step selects (the decision of :meth:`begin`)."""
        return self.selecting

    def begin(self, keys: Sequence[Hashable] = ()) -> bool:
        """Decide this step: select on scheduled steps or when a key of ``keys`` (the ones the step
        may use) carries nothing; keys a selecting step at this shape left unwritten are not needed."""
        self._expected = list(keys)
        self.selecting = self.step % self.recompute_every == 0 or any(
            k not in self.valid and k not in self.idle for k in keys)
        return self.selecting

    def reset(self) -> None:
        """Start a new generation: step 0, nothing carried (the buffers stay, their contents void)."""
        self.step = 0
        self.selecting = True
        self.valid.clear()
        self._fresh.clear()
        self._last_timestep = None
        self.generations += 1

    def advance(self) -> None:
        """One step done (host): what it wrote is carried, the next step is decided by schedule."""
        self.finish()
        self.step += 1
        self.selecting = self.step % self.recompute_every == 0

    def observe_timestep(self, t: float | None) -> None:
        """New-generation rule for callers without a pipeline hook (engine wrappers, servers).

        Diffusers schedules run timesteps downwards, so a timestep that does not decrease starts a
        new generation. ``None`` (unknown, e.g. a device tensor not worth a sync) changes nothing.
        """
        if t is not None and self._last_timestep is not None and t >= self._last_timestep:
            self.reset()
        self._last_timestep = t

    # -- buffers ---------------------------------------------------------------------------------------
    def reserve(self, key: Hashable, shape: Sequence[int], device: torch.device) -> None:
        """Allocate ``key``'s buffer before a traced step needs it (host), so the first traced select
        step already writes in place and later ones trace the same graph."""
        buf = self.buffers.get(key)
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.device != torch.device(device):
            with torch.inference_mode(False):
                self._keep(key, torch.zeros(tuple(shape), dtype=torch.long, device=device))
            self.valid.discard(key)

    def _keep(self, key: Hashable, buf: torch.Tensor) -> torch.Tensor:
        if buf.device.type == "cuda" and not torch.compiler.is_compiling():
            torch._dynamo.mark_static_address(buf)  # a static input of inductor's CUDA-graph trees
        self.buffers[key] = buf
        return buf

    def write(self, key: Hashable, fresh: torch.Tensor) -> None:
        """Carry ``fresh`` destinations for ``key``: copied into its buffer (made on first use)."""
        buf = self.buffers.get(key)
        if buf is not None and buf.shape == fresh.shape and buf.device == fresh.device:
            buf.copy_(fresh)
        elif torch.compiler.is_compiling():
            self._keep(key, fresh.clone())
        else:
            with torch.inference_mode(False):  # made in an inference-mode call, written outside one
                self._keep(key, fresh.detach().clone())
        if not torch.compiler.is_compiling():  # traced code leaves host lists alone: dynamo would guard on them
            self._fresh.append(key)

    @property
    def carried(self) -> dict[Hashable, torch.Tensor]:
        """The destinations carried into the next step, by key (this generation's written buffers)."""
        return {k: self.buffers[k] for k in self.valid}

    def read(self, keys: Sequence[Hashable]) -> list[torch.Tensor]:
        return [self.buffers[k] for k in keys]

    def finish(self, runs: int | None = None) -> None:
        """Host bookkeeping after the step's computation: the keys written are valid; ``runs``
        selections are counted (default: one per key written)."""
        if self.selecting:
            if not self._fresh:  # a compiled step records no writes on the host: its reserved keys were written
                self._fresh = [k for k in self._expected if k not in self.idle]
            self.idle.update(k for k in self._expected if k not in self._fresh)
        if self._fresh:
            self.idle.difference_update(self._fresh)
            self.valid.update(self._fresh)
            self.selections += len(self._fresh) if runs is None else runs
            self._fresh.clear()
        self._expected = []

    # -- eager sites -----------------------------------------------------------------------------------
    def carry(self, key: Hashable, select: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The destinations for ``key`` this step: fresh from ``select()`` (written to its buffer) on
        select steps or where ``key`` carries nothing, its buffer otherwise. Reads only
        :attr:`selecting` and the buffers, so it traces to the select or the reuse graph."""
        buf = self.buffers.get(key)
        if self.selecting or buf is None:
            fresh = select()
            self.write(key, fresh)
            return fresh
        return buf


def run_step(
    schedule: StepSchedule, keys: Sequence[Hashable], select: Variant, reuse: Variant, flat: list[torch.Tensor]
) -> list[torch.Tensor]:
    """One step of a two-variant program (the one select/reuse stepper of every runner): the select
    variant when ``schedule`` decides so (its trailing outputs, one per key, are carried), the reuse
    variant on the carried destinations otherwise. Returns the model outputs; the caller advances."""
    if schedule.begin(keys):
        out = list(select(flat))
        n = len(keys)
        for key, fresh in zip(keys, out[len(out) - n :]):
            schedule.write(key, fresh)
        schedule.finish(runs=1)
        return out[: len(out) - n]
    return list(reuse(flat + schedule.read(keys)))
