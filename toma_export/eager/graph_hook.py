"""Eager ToMA for architectures without a hand-written adapter: the graph pass behind a diffusers hook.

FLUX.2, Qwen-Image, SD3.5, Wan and their peers are matched by graph pattern (``toma_export.graph``:
grid discovery, joint attention, masks, RoPE layouts, MLP variants). A per-family eager adapter
would re-implement that matcher with module names, so instead one stateful :class:`GraphPassHook`
on the denoiser captures the model at the first call of each input signature, rewrites it
(``toma_export.rewrite``) and runs the :class:`~toma_export.graph.program.ToMAProgram` from then
on. A model is accepted only when the pass matched merge sites at that call: otherwise the call
raises :class:`UnsupportedModelError` with the matcher's reasons (``toma-export inspect`` prints the
same report) and the hook stays inert for that signature. The cost is one ``torch.export`` per input
signature (resolution, batch, dtype), paid at its first call.

ToDo (``method="todo"``) takes the same hook with the key/value graph pass instead
(:mod:`toma_export.graph.kv_downsample`): a stateless program whose self-attentions gather the kept
rows of K and V before SDPA; no select/reuse steps. It is refused only where no self-attention's
keys could be downsampled.
"""

from __future__ import annotations

import inspect
from typing import Any, Hashable

import torch
from diffusers.hooks.hooks import ModelHook

from toma_export.config import ToMAConfig
from toma_export.errors import ToMAError, UnsupportedModelError

HOOK_NAME = "toma_graph_pass"


def signature_key(kwargs: dict[str, Any]) -> Hashable:
    """What makes a captured program valid for a call: tensor shapes, dtypes and devices, other values."""

    def one(v: Any) -> Hashable:
        if isinstance(v, torch.Tensor):
            return ("T", tuple(v.shape), str(v.dtype), str(v.device))
        if isinstance(v, (list, tuple)):
            return (type(v).__name__, tuple(one(x) for x in v))
        if isinstance(v, dict):
            return ("D", tuple((k, one(x)) for k, x in sorted(v.items())))
        return ("V", repr(v))

    return tuple((k, one(v)) for k, v in sorted(kwargs.items()))


class GraphPassHook(ModelHook):
    """Runs the denoiser through graph-pass programs, one per input signature (see module doc)."""

    _is_stateful = True

    def __init__(self, config: ToMAConfig):
        super().__init__()
        self.config = config
        self.programs: dict[Hashable, Any] = {}
        self.refused: dict[Hashable, str] = {}
        self.active: Any = None  # the program of the last call
        self._capturing = False

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        original: Any = self.fn_ref.original_forward  # set by the registry when the hook is registered
        if self._capturing or not self.config.active:
            return original(*args, **kwargs)
        if args:  # pipelines pass keywords; bind positional ones to the forward's parameter names
            kwargs = dict(inspect.signature(original).bind(*args, **kwargs).arguments)
        key = signature_key(kwargs)
        if key in self.refused:
            raise UnsupportedModelError(self.refused[key])
        program = self.programs.get(key)
        if program is None:
            program = self._rewrite(module, kwargs, key)
        self.active = program
        return program(**kwargs)

    def _rewrite(self, module: torch.nn.Module, kwargs: dict[str, Any], key: Hashable) -> Any:
        import toma_export.graph as graph_pass
        self._capturing = True  # torch.export traces the hooked forward: let it see the model's own
        try:
            program = graph_pass.rewrite(module, kwargs, self.config, strict=False)  # ToMA or ToDo; checked below
        except ToMAError as e:
            self.refused[key] = str(e)
            raise
        except Exception as e:  # noqa: BLE001 - never a raw exception from apply's hook
            self.refused[key] = f"{type(module).__name__}: the graph pass failed ({type(e).__name__}: {e})"
            raise UnsupportedModelError(self.refused[key]) from e
        finally:
            self._capturing = False
        if not program.sites:
            reasons = "; ".join(f"{s.kind} at {s.name}: {s.reason}" for s in program.skipped[:8]) or "no candidate site"
            self.refused[key] = (
                f"{type(module).__name__}: the graph pass matched no merge site at these inputs ({reasons}). "
                "Run `toma-export inspect` on the model for the full report; the model runs unmerged after remove()."
            )
            raise UnsupportedModelError(self.refused[key])
        self.programs[key] = program
        return program

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        """A new generation: every program starts again at step 0 (diffusers calls this after each pipeline call)."""
        for program in self.programs.values():
            program.reset()
        return module

