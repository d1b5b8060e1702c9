"""Which token counts are image grids, read from the model's example inputs (not its class).

A merge site needs the 2-D grid of its image tokens. Sources, in order of trust:

- position ids ``(N, A)`` / ``(B, N, A)`` of any dtype and any number of axes ``A >= 2`` (Flux's
  float ``(N, 3)``, FLUX.2's int64 ``(B, N, 4)`` = (t, h, w, l), scaled or offset ids): the axes that
  vary are ranked (so a scale or offset does not matter) and must enumerate a full row-major grid;
  two varying axes give ``rows x cols``, three give ``frames x rows x cols`` (video); one joint
  table for ``[text; image]`` gives the grid of its image block (:func:`grid_from_joint_ids`);
- per-axis positions: a list of 2 or 3 1-D integer tensors (Kandinsky 5's ``visual_rope_pos`` =
  ``[t, h, w]`` aranges), whose lengths are the grid's sides;
- grid shapes passed as plain ints: tuples ``(f, h, w)`` / ``(h, w)`` anywhere in the inputs
  (Qwen-Image's ``img_shapes``), or ``num_frames`` / ``height`` / ``width`` ints (LTX's packed video);
- a 4-D latent input ``(B, C, H, W)`` (never a text input ``encoder_hidden_states*``) (UNets, DiT, PixArt, SD3): ``H x W`` and its ceil-halvings
  (UNet levels; patch embeddings of size 2, 4, ... give the same sides when they divide), the
  model config's ``patch_size`` first when known;
- a 5-D video latent ``(B, C, F, H, W)`` (Wan): ``F' x H' x W'`` with the config's patch sizes
  (else spatial halvings, frames kept); last, one frame's ``H' x W'`` at the config's patch size
  for blocks that fold the frames into the batch (Latte's spatial attention).

Video grids are frame-major: a :class:`Grid` with ``frames = F`` is the row-major ``(F * h) x w``
grid of the sequence; its tile layout (``TileLayout(frames=F)``) keeps tiles inside frames, each
frame with its own unmerged border when the tile does not divide it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

from toma_export.graph.provenance import TEXT_INPUT_PREFIX


@dataclass(frozen=True)
class Grid:
    """A token grid and its downsampling factor relative to the input it was derived from.

    ``h`` counts all rows of the sequence: ``frames`` stacked frames of ``h // frames`` rows each.
    """

    h: int
    w: int
    downsample: int = 1
    frames: int = 1

    @property
    def tokens(self) -> int:
        return self.h * self.w

    @property
    def frame_h(self) -> int:
        return self.h // self.frames


def _ranks(col: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Dense rank of each value of a 1-D column (0 .. n_unique-1) and the number of unique values."""
    uniq, inv = torch.unique(col, sorted=True, return_inverse=True)
    return inv, int(uniq.numel())


def grid_from_ids(ids: torch.Tensor) -> Grid | None:
    """The row-major grid position ids ``(N, A)`` or ``(B, N, A)`` enumerate, or None.

    Axes that are constant are ignored; the varying ones, ranked, must be a full grid in row-major
    order (first varying axis slowest). Two varying axes: ``rows x cols``; three: frames x rows x cols.
    """
    if ids.ndim not in (2, 3) or ids.shape[-1] < 2 or ids.shape[-2] < 2 or ids.is_complex():
        return None
    ids = (ids[0] if ids.ndim == 3 else ids).detach().cpu()
    if ids.is_floating_point():
        if not bool(torch.isfinite(ids).all()):
            return None
        ids = ids.double()
    n = ids.shape[0]
    cols = []
    for a in range(ids.shape[1]):
        r, u = _ranks(ids[:, a])
        if u > 1:
            cols.append((r, u))
    if len(cols) not in (2, 3) or math.prod(u for _, u in cols) != n:
        return None
    flat = torch.zeros(n, dtype=torch.long)
    for r, u in cols:
        flat = flat * u + r
    if not torch.equal(flat, torch.arange(n)):
        return None
    sides = [u for _, u in cols]
    if len(sides) == 2:
        return Grid(sides[0], sides[1])
    return Grid(sides[0] * sides[1], sides[2], frames=sides[0])


def grid_from_joint_ids(ids: torch.Tensor) -> tuple[Grid, int] | None:
    """The image block of joint position ids ``[text; image]`` or ``[image; text]`` (one table for the
    whole sequence, Krea 2 / Ideogram 4) and its row offset, or None.

    Text rows usually sit at or below the image's first position (Krea 2: all zero; Ideogram 4:
    before an offset image block), so a suffix block can only start at a row equal to the element-wise
    minimum of every row after it, and a prefix block can only end at a row equal to the running
    maximum; only those few candidates are tried as grids.
    """
    if ids.ndim not in (2, 3) or ids.shape[-1] < 2 or ids.shape[-2] < 8 or ids.is_complex():
        return None
    x = (ids[0] if ids.ndim == 3 else ids).detach().cpu().double()
    if not bool(torch.isfinite(x).all()):
        return None
    n = x.shape[0]
    suffix_min = torch.flip(torch.cummin(torch.flip(x, [0]), 0).values, [0])
    for k in torch.nonzero((x == suffix_min).all(1)).flatten().tolist():
        if 0 < k <= n - 4 and (g := grid_from_ids(x[k:])) is not None:
            return g, k
    prefix_max = torch.cummax(x, 0).values
    for k in reversed(torch.nonzero((x == prefix_max).all(1)).flatten().tolist()):
        if 4 <= k + 1 < n and (g := grid_from_ids(x[: k + 1])) is not None:
            return g, 0
    return None


def _nested(obj: Any, sides: Callable[[Any], tuple[int, ...] | None]) -> list[tuple[int, ...]]:
    """``sides(seq)`` of every list/tuple nested in lists/tuples/dicts of the inputs that it accepts
    (the ones it refuses are searched further)."""
    out: list[tuple[int, ...]] = []
    if isinstance(obj, (list, tuple)):
        found = sides(obj)
        if found is not None:
            return [found]
        for v in obj:
            out.extend(_nested(v, sides))
    elif isinstance(obj, dict):
        for v in obj.values():
            out.extend(_nested(v, sides))
    return out


def _int_shape(seq: Any) -> tuple[int, ...] | None:
    """A tuple of 2 or 3 positive ints (Qwen-Image's ``img_shapes`` entries)."""
    if len(seq) in (2, 3) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in seq):
        return tuple(seq)
    return None


def _is_axis_positions(v: Any) -> bool:
    """A 1-D integer tensor: positions along one axis. Its length is the side; its values are not
    read (Kandinsky 6 appends a reference frame at position 0 to the temporal axis)."""
    return (isinstance(v, torch.Tensor) and v.ndim == 1 and v.numel() > 0 and not v.is_floating_point()
            and not v.is_complex() and v.dtype is not torch.bool)


def _position_lengths(seq: Any) -> tuple[int, ...] | None:
    """The lengths of a list of 2 or 3 per-axis position tensors (Kandinsky's ``visual_rope_pos``)."""
    if len(seq) in (2, 3) and all(_is_axis_positions(v) for v in seq):
        return tuple(int(v.numel()) for v in seq)
    return None


def _is_text(path: tuple[Any, ...]) -> bool:
    """Whether an input leaf is the text stream (``encoder_hidden_states*``, diffusers' name for it)."""
    key = getattr(path[0], "key", None) if path else None
    return isinstance(key, str) and key.startswith(TEXT_INPUT_PREFIX)


def _grid_of_shape(t: tuple[int, ...]) -> Grid | None:
    if len(t) == 2:
        h, w, f = t[0], t[1], 1
    else:
        f, h, w = t
    if h * w < 2:
        return None
    return Grid(f * h, w, frames=f) if f > 1 else Grid(h, w)


def _config_value(config: Any, key: str) -> Any:
    """``config[key]`` of a diffusers config (a FrozenDict or an attribute object), None if absent."""
    if config is None:
        return None
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def _patch(config: Any) -> tuple[int, int, int] | None:
    """(temporal, height, width) patch sizes from a model config's ``patch_size`` (+ ``patch_size_t``)."""
    p = _config_value(config, "patch_size")
    if p is None:
        return None
    if isinstance(p, int):
        return int(_config_value(config, "patch_size_t") or 1), p, p
    p = tuple(int(v) for v in p)
    if len(p) == 3:
        return p[0], p[1], p[2]
    if len(p) == 2:
        return 1, p[0], p[1]
    return None


def _video_axes(shape: tuple[int, ...], config: Any) -> tuple[int, int, int]:
    """(frames, height, width) of a 5-D video latent. Diffusers' layouts: ``(B, C, F, H, W)`` (Wan,
    LTX, Mochi, HunyuanVideo), ``(B, F, C, H, W)`` (CogVideoX), ``(B, F, H, W, C)`` (Kandinsky 5); the
    config's input width (``in_channels``, else another ``in_*channels`` / ``in_*_dim`` such as
    Kandinsky's ``in_visual_dim``) says which axis holds the channels, channels-first when it cannot tell."""
    for c in _input_widths(config):
        if shape[1] == c:
            break
        if shape[2] == c:
            return shape[1], shape[3], shape[4]
        if shape[4] == c:
            return shape[1], shape[2], shape[3]
    return shape[2], shape[3], shape[4]


def _input_widths(config: Any) -> list[int]:
    """Input channel counts a config names: ``in_channels`` first, then other ``in_*channels`` / ``in_*_dim``."""
    first = _config_value(config, "in_channels")
    items = config.items() if isinstance(config, dict) else vars(config).items() if config is not None else []
    rest = [v for k, v in items if isinstance(k, str) and k.startswith("in_") and k != "in_channels"
            and (k.endswith("channels") or k.endswith("_dim"))]
    return [c for c in [first, *rest] if isinstance(c, int) and not isinstance(c, bool) and c > 0]


def token_grids(
    example_kwargs: dict[str, Any], config: Any = None, joints: dict[int, tuple[Grid, int]] | None = None
) -> list[Grid]:
    """Candidate image grids of a model's inputs, one per token count, most trusted first.

    ``config`` (the model's config, optional) supplies patch sizes when the latent's shape alone
    cannot tell. ``joints``: :func:`joint_layouts` of the same inputs, when the caller has them. A sequence input (text) as long as a grid does not hide the grid: the matcher tells
    the streams apart by token provenance (``provenance``).
    """
    latent: list[Grid] = []
    per_frame: list[Grid] = []  # lowest trust: one frame's grid, for blocks that fold frames into the batch
    exact: list[Grid] = []
    patch = _patch(config) if config is not None else None
    for path, leaf in pytree.tree_leaves_with_path(example_kwargs):
        if not isinstance(leaf, torch.Tensor):
            continue
        if leaf.ndim in (2, 3) and 2 <= leaf.shape[-1] <= 8 and leaf.shape[-2] > 1:
            g = grid_from_ids(leaf)
            if g is not None:
                exact.append(g)
        if not leaf.is_floating_point() or _is_text(path):
            continue  # text features are never latents, whatever their rank (Krea 2's (B, L, layers, D))
        if leaf.ndim == 4:
            h, w = int(leaf.shape[-2]), int(leaf.shape[-1])
            if patch is not None and patch[1:] != (1, 1) and h % patch[1] == 0 and w % patch[2] == 0:
                latent.append(Grid(h // patch[1], w // patch[2], patch[1]))
            f = 1
            while h * w > 1:
                latent.append(Grid(h, w, f))
                h, w, f = -(-h // 2), -(-w // 2), f * 2
        elif leaf.ndim == 5:
            fr, h, w = _video_axes(tuple(int(s) for s in leaf.shape), config)
            h0, w0 = h, w
            if patch is not None and fr % patch[0] == 0 and h % patch[1] == 0 and w % patch[2] == 0:
                pf = fr // patch[0]
                latent.append(Grid(pf * (h // patch[1]), w // patch[2], patch[1], frames=pf))
            f = 1
            while h * w > 1:
                latent.append(Grid(fr * h, w, f, frames=fr))
                h, w, f = -(-h // 2), -(-w // 2), f * 2
            # one frame's grid (frames folded into the batch, Latte's spatial blocks): the config's patch only
            if patch is not None and h0 % patch[1] == 0 and w0 % patch[2] == 0:
                per_frame.append(Grid(h0 // patch[1], w0 // patch[2], patch[1]))
    for t in _nested(example_kwargs, _int_shape) + _nested(example_kwargs, _position_lengths):
        g = _grid_of_shape(t)
        if g is not None:
            exact.append(g)
    ints = {k: v for k, v in example_kwargs.items() if isinstance(v, int) and not isinstance(v, bool)}
    if "height" in ints and "width" in ints:
        f = ints.get("num_frames", 1)
        exact.append(Grid(f * ints["height"], ints["width"], frames=f) if f > 1 else Grid(ints["height"], ints["width"]))
    joints = joint_layouts(example_kwargs) if joints is None else joints
    exact += [g for g, _ in joints.values()]
    seen: dict[int, Grid] = {}
    for g in exact + latent + per_frame:
        seen.setdefault(g.tokens, g)
    return sorted(seen.values(), key=lambda g: -g.tokens)


def joint_layouts(example_kwargs: dict[str, Any]) -> dict[int, tuple[Grid, int]]:
    """Sequence length -> (grid, offset of the image block) for each joint ``[text; image]`` id table
    among the inputs: a sequence packed as one input (Ideogram 4: text and image tokens in one
    ``hidden_states``) is as long as its id table, with the image block where the ids say."""
    out: dict[int, tuple[Grid, int]] = {}
    for leaf in pytree.tree_leaves(example_kwargs):
        if isinstance(leaf, torch.Tensor) and leaf.ndim in (2, 3) and 2 <= leaf.shape[-1] <= 8 and leaf.shape[-2] > 1:
            if grid_from_ids(leaf) is None and (found := grid_from_joint_ids(leaf)) is not None:
                out.setdefault(int(leaf.shape[-2]), found)
    return out


def grid_for(grids: list[Grid], tokens: int) -> Grid | None:
    return next((g for g in grids if g.tokens == tokens), None)
