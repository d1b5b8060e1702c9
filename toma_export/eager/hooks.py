"""ToMA's diffusers hooks (``diffusers.hooks.ModelHook`` on ``HookRegistry``, as diffusers' caches).

- :class:`StepHook` on the denoiser: one forward is one step; it reads the call's token grid and
  owns the :class:`MergeContext` per diffusers cache context (``"cond"``/``"uncond"``, or one
  default). It is stateful: pipelines reset it after every call (``maybe_free_model_hooks``), so
  every pipeline sharing the model starts each call at step 0.
- :class:`TileOrderHook` on a UNet transformer block: the block runs on tile-major tokens, so its
  sites split and join by views.
- :class:`SiteHook` on a sub-layer: merges its input tokens, unmerges its output (or, for
  keys-only methods, hands it downsampled keys/values).
- :class:`RopeAttentionHook` on an attention module whose image tokens arrive merged: RoPE rows
  follow the destinations. Positions differ per batch element while diffusers' processors take
  one ``(S, D)`` table, so the module's own forward (processor and attention backend) runs once
  per batch element with that element's rows (gathered once per group and step).
- :class:`RopeTableHook` on the module that makes the RoPE tables: a reuse step's merged rows,
  gathered once for all blocks.
- :class:`SpanMergeHook` / :class:`SpanUnmergeHook`: merge the image span of a module's output and
  unmerge it after a later module (single-stream blocks: norm -> attention + MLP -> projection).

Hooks hold Python state only between a pre- and post-forward of one call, and shapes decide
every branch, so ``torch.compile(fullgraph=True)`` traces them without a graph break.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

from toma_export.baselines.todo import downsample_index, downsample_tokens
from toma_export.config import SubLayer, ToMAConfig
from toma_export.core.merge import uses_kernels
from toma_export.core.tiles import TileLayout
from toma_export.eager.state import MergeContext
from toma_export.eager.mergers import EagerMethod, Merger, eager_method

STEP_HOOK = "toma_step"
SITE_HOOK = "toma_site"
TILE_ORDER_HOOK = "toma_tile_order"
ATTENTION_HOOK = "toma_rope_attention"
ROPE_TABLE_HOOK = "toma_rope_table"
SPAN_MERGE_HOOK = "toma_span_merge"
SPAN_UNMERGE_HOOK = "toma_span_unmerge"

#: Reads the call's grid into the context: ``(context, args, kwargs)``.
GridReader = Callable[[MergeContext, tuple, dict], None]
#: The token grids the current call may merge, from the context its reader filled.
MergedGrids = Callable[[MergeContext], "list[tuple[int, int]]"]


class _Contexts(StateManager):
    """Diffusers' per-cache-context state manager, whose reset starts a new generation in every
    context but keeps the objects (their lifetime counters stay readable after a call)."""

    def reset(self, *args: Any, **kwargs: Any) -> None:
        for state in self._state_cache.values():
            state.reset(*args, **kwargs)
        self._context = None


#: The step hook's host code, skipped by dynamo; the reason is what ``fullgraph=True`` reports.
_host_code = torch.compiler.disable(
    reason="toma_export's step hook runs on the host between compiled graphs (the select/reuse schedule); "
           "compile the applied model without fullgraph=True, or its repeated blocks (compile_repeated_blocks)")


class StepHook(ModelHook):
    """Step boundaries and the per-generation state of the model it sits on.

    Its pre- and post-forward are host code (``torch.compiler.disable``): the step count, the grid
    and the select/reuse decision are settled before the model's computation, never traced. A
    whole-model ``torch.compile`` therefore breaks the graph at the step boundary only (the body is
    one graph per variant); regional compilation (``compile_repeated_blocks``) never sees them.
    """

    _is_stateful = True

    def __init__(self, config: ToMAConfig, read_grid: GridReader, grids: MergedGrids | None = None):
        super().__init__()
        self.config = config
        self.method: EagerMethod = eager_method(config.method)
        self.read_grid = read_grid
        self.grids = grids
        self.default = MergeContext(config)
        self.contexts = _Contexts(MergeContext, (config,))  # type: ignore[arg-type]  # diffusers sets its cache context
        self.active = self.default

    def current(self) -> MergeContext:
        return self.default if self.contexts._context is None else self.contexts.get_state()

    @_host_code
    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        ctx = self.active = self.current()
        ctx.begin_step()
        self.read_grid(ctx, args, kwargs)
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        grids = self.grids(ctx) if self.grids is not None and self.method.tile_destinations else []
        if isinstance(x, torch.Tensor) and grids:
            ctx.prepare(grids, int(x.shape[0]), x.device, x.dtype)
        else:
            ctx.schedule.begin()
        return args, kwargs

    @_host_code
    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        self.active.end_step()
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.default.reset()
        self.contexts.reset()
        return module


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor | None:
    x = args[0] if args else kwargs.get("hidden_states")
    return x if isinstance(x, torch.Tensor) and x.ndim == 3 else None


def _with_hidden(args: tuple, kwargs: dict, x: torch.Tensor) -> tuple[tuple, dict]:
    return ((x, *args[1:]), kwargs) if args else (args, dict(kwargs, hidden_states=x))


def _map_first(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    return fn(output)


@dataclass
class BlockSite:
    """What the hooks of one block share within a call: its name and the merger in flight."""

    root: StepHook
    name: str
    #: Grid of ``n`` tokens at this block for the current call, or None (leave unmerged).
    grid_of: Callable[[MergeContext, int], "tuple[int, int] | None"]
    pending: dict[str, Any] = field(default_factory=dict)

    @property
    def ctx(self) -> MergeContext:
        return self.root.active

    def merger(self, x: torch.Tensor, grid: tuple[int, int], first: bool) -> Merger | None:
        make = self.root.method.merger
        return None if make is None else make(self.ctx, self.name, x, grid[0], grid[1], first)


class TileOrderHook(ModelHook):
    """Runs a UNet transformer block on its tokens in tile-major order.

    Every merged sub-layer of the block would otherwise split its input into tiles and join its
    output back, each a permuting copy of the whole token tensor; here the block's input is permuted
    once and its output once, and the sites' splits and joins are views (``TileLayout.tile_major``).
    Exact: a block whose sub-layers act per token or attend without positions (self-attention without
    a mask, cross-attention queries, norms, the MLP) gives the same tokens in any order. Blocks with a
    positional embedding are not given this hook; calls with a self-attention mask or a grid that is
    not merged run as they come, and so do tokens on the fused kernels' devices (CUDA): the kernels
    address row-major tiles themselves, so the two permuting copies would buy nothing.
    """

    def __init__(self, site: BlockSite):
        super().__init__()
        self.site = site
        self._order: TileLayout | None = None  # the row-major layout of the call in flight, when permuted

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        self._order = None
        x = _hidden(args, kwargs)
        if x is None or uses_kernels(x) or len(args) > 1 or kwargs.get("attention_mask") is not None:
            return args, kwargs
        ctx = self.site.ctx
        grid = self.site.grid_of(ctx, x.shape[1])
        if grid is None:
            return args, kwargs
        layout = ctx.layout_for(*grid)
        if not ctx.merges(layout):
            return args, kwargs
        self._order, ctx.tile_major = layout, True
        return _with_hidden(args, kwargs, layout.to_tile_order(x))

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        layout, self._order = self._order, None
        if layout is None:
            return output
        self.site.ctx.tile_major = False
        return _map_first(output, layout.from_tile_order)


class SiteHook(ModelHook):
    """Runs a sub-layer on merged tokens: merge its input, unmerge its output."""

    def __init__(self, site: BlockSite, sub: SubLayer, first: bool):
        super().__init__()
        self.site, self.sub, self.first = site, sub, first
        self._merger: Merger | None = None

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        self._merger = None
        x = _hidden(args, kwargs)
        if x is None or (self.sub is SubLayer.ATTN and kwargs.get("attention_mask") is not None):
            return args, kwargs  # a token mask cannot follow merged tokens
        grid = self.site.grid_of(self.site.ctx, x.shape[1])
        if grid is None:
            return args, kwargs
        if self.site.root.method.keys_only:
            if self.sub is not SubLayer.ATTN:
                return args, kwargs
            kv = downsample_tokens(x, grid[0], grid[1], self.site.ctx.config.ratio)
            return args, dict(kwargs, encoder_hidden_states=kv)
        self._merger = self.site.merger(x, grid, self.first)
        return (args, kwargs) if self._merger is None else _with_hidden(args, kwargs, self._merger.merge(x))

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        merger, self._merger = self._merger, None
        return output if merger is None else _map_first(output, merger.unmerge)


class RopeAttentionHook(ModelHook):
    """Attention over ``[text; image]`` with RoPE, on merged image tokens.

    ``merge=True`` (double-stream): merges the module's image ``hidden_states`` and unmerges its
    image output. ``merge=False`` (single-stream): the sequence arrived merged (a
    :class:`SpanMergeHook` earlier in the block); only RoPE rows follow. Keys-only methods get a
    key mask instead (queries keep every token; exact ToDo attention through the model's processor).
    """

    def __init__(self, site: BlockSite, merge: bool, first: bool):
        super().__init__()
        self.site, self.merge, self.first = site, merge, first

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        forward: Callable[..., Any] = self.fn_ref.original_forward  # type: ignore[assignment]
        x = _hidden(args, kwargs)
        rope = kwargs.get("image_rotary_emb")
        text_states = kwargs.get("encoder_hidden_states")
        extra = set(kwargs) - {"hidden_states", "encoder_hidden_states", "image_rotary_emb", "attention_mask"}
        if args or x is None or not isinstance(rope, tuple) or extra or kwargs.get("attention_mask") is not None:
            return forward(*args, **kwargs)  # IP-adapters, masks, other signatures: unmerged
        if self.site.root.method.keys_only:
            return self._keys_only(forward, kwargs)
        if self.merge:
            grid = self.site.grid_of(self.site.ctx, x.shape[1])
            if grid is None or text_states is None:
                return forward(**kwargs)
            merger = self.site.merger(x, grid, self.first)
            if merger is None:
                return forward(**kwargs)
            rows = self.site.ctx.rope_rows(merger, rope, int(text_states.shape[1]))
            out = self._per_batch(forward, dict(kwargs, hidden_states=merger.merge(x)), rows)
            return _map_first(out, merger.unmerge)
        merger = self.site.pending.get("span")
        if merger is None:
            return forward(**kwargs)
        return self._per_batch(forward, kwargs, self.site.ctx.rope_rows(merger, rope, int(self.site.pending["text"])))

    def _per_batch(self, forward: Callable[..., Any], kwargs: dict, rows: list[tuple[torch.Tensor, ...]]) -> Any:
        outs = []
        for b, rope_b in enumerate(rows):
            one = {k: (v[b : b + 1] if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
            one["image_rotary_emb"] = rope_b
            outs.append(forward(**one))
        if len(outs) == 1:
            return outs[0]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts, dim=0) for parts in zip(*outs))
        return torch.cat(outs, dim=0)

    def _keys_only(self, forward: Callable[..., Any], kwargs: dict) -> Any:
        """ToDo: every query, keys/values of the text and of the downsampled image grid only."""
        grid = self.site.ctx.grid
        seq = kwargs["image_rotary_emb"][0].shape[0]
        if grid is None or grid[0] * grid[1] > seq:
            return forward(**kwargs)
        start = seq - grid[0] * grid[1]  # image tokens come last in [text; image] sequences
        device = kwargs["hidden_states"].device
        keep = torch.zeros(seq, dtype=torch.bool, device=device)
        keep[:start] = True
        keep[downsample_index(grid[0], grid[1], self.site.ctx.config.ratio, device) + start] = True
        return forward(**dict(kwargs, attention_mask=keep.view(1, 1, 1, seq)))


class RopeTableHook(ModelHook):
    """On the module that makes the RoPE tables (Flux's ``pos_embed``): on a reuse step the carried
    destinations are known before any block runs, so the merged rows are gathered here once for
    every block (:meth:`MergeContext.rope_rows`), and every block's sites read them, as a select
    step's later sites do (one traced variant for all of them under regional compilation)."""

    def __init__(self, root: StepHook):
        super().__init__()
        self.root = root

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        if isinstance(output, tuple) and all(isinstance(t, torch.Tensor) and t.ndim == 2 for t in output):
            self.root.active.carried_rope_rows(output)
        return output


class SpanMergeHook(ModelHook):
    """Merges the image span (the last ``h*w`` tokens) of the module's first output."""

    def __init__(self, site: BlockSite, first: bool):
        super().__init__()
        self.site, self.first = site, first

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        self.site.pending.clear()
        seq = output[0] if isinstance(output, tuple) else output
        grid = self.site.ctx.grid
        if grid is None or self.site.root.method.merger is None or seq.shape[1] <= grid[0] * grid[1]:
            return output
        text = seq.shape[1] - grid[0] * grid[1]
        image = seq[:, text:]
        merger = self.site.merger(image, grid, self.first)
        if merger is None:
            return output
        self.site.pending.update(span=merger, text=text)
        return _map_first(output, lambda s: torch.cat([s[:, :text], merger.merge(image)], dim=1))


class SpanUnmergeHook(ModelHook):
    """Unmerges the image span that :class:`SpanMergeHook` merged, after this module."""

    def __init__(self, site: BlockSite):
        super().__init__()
        self.site = site

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        merger = self.site.pending.pop("span", None)
        if merger is None:
            return output
        text = self.site.pending.pop("text")
        return torch.cat([output[:, :text], merger.unmerge(output[:, text:])], dim=1)


def share_forward(module: torch.nn.Module) -> None:
    """Make the forward ``HookRegistry`` just installed one that dynamo matches by code, not identity.

    The registry sets ``module.forward = functools.partial(new_forward, module)``, a new object per
    instance; dynamo guards an instance-level ``forward`` by identity unless it is a bound method of
    a plain function, which it matches by ``__code__``. So regional compilation
    (``compile_repeated_blocks``, ``torch.compile`` of single blocks) compiled one graph per hooked
    block. The same chain bound with ``types.MethodType`` is one graph per block class and variant.
    The registry still owns the chain (``remove_hook`` writes back the forward it saved), and
    ``__wrapped__`` keeps ``inspect.signature`` on the module's own signature (torch.export binds
    arguments by it).
    """
    fwd = module.__dict__.get("forward")
    if not (isinstance(fwd, functools.partial) and fwd.args == (module,) and not fwd.keywords
            and isinstance(fwd.func, types.FunctionType)):
        return
    inner: Any = fwd  # back through the forwards before this hook to one bound to the module
    while inner is not None and not (isinstance(inner, types.MethodType) and inner.__self__ is module):
        inner = getattr(inner, "__wrapped__", None)
    if inner is not None:
        fwd.func.__wrapped__ = inner.__func__  # type: ignore[attr-defined]  # a closure made for this hook alone
    module.forward = types.MethodType(fwd.func, module)


@dataclass
class Installed:
    """Every hook one ``apply`` registered, so ``remove`` takes exactly those off."""

    model: torch.nn.Module
    root: StepHook
    hooks: list[tuple[torch.nn.Module, str]] = field(default_factory=list)
    created: list[torch.nn.Module] = field(default_factory=list)  # modules that had no registry before
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def add(self, module: torch.nn.Module, hook: ModelHook, name: str) -> None:
        if not hasattr(module, "_diffusers_hook"):
            self.created.append(module)
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
        share_forward(module)
        self.hooks.append((module, name))

    def remove(self) -> None:
        for fn in reversed(self.cleanup):
            fn()
        self.cleanup.clear()
        for module, name in reversed(self.hooks):
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(name, recurse=False)
        self.hooks.clear()
        self.invalidate()
        for module in self.created:
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None and not registry.hooks:
                del module._diffusers_hook
                # the registry leaves the class's forward bound on the instance: drop it, as before apply
                bound = module.__dict__.get("forward")
                if getattr(bound, "__func__", None) is type(module).forward and getattr(bound, "__self__", None) is module:
                    del module.__dict__["forward"]
        self.created.clear()

    def invalidate(self) -> None:
        """Registries cache their children: refresh after adding or removing child hooks."""
        registry = getattr(self.model, "_diffusers_hook", None)
        if registry is not None:
            registry.invalidate_child_registries_cache()
