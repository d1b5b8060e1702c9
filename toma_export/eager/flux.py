"""Eager ToMA for diffusers Flux transformers: double- and single-stream blocks.

Following the method's published Flux code: image tokens merge after the block's (Ada)LayerNorm,
text tokens never merge, merged tokens take their destination's RoPE position (a gather). In a
double-stream block the image stream merges before Q/K/V and unmerges after the output
projection (equal to before it: the projection is affine and unmerge is convex); its MLP merges
separately. In a single-stream block attention and the parallel MLP both run on merged tokens
and unmerge after ``proj_out``. RoPE positions differ per batch element, so attention here
applies them per batch instead of through diffusers' shared ``(S, D)`` tables.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from toma_export.baselines.todo import downsample_index
from toma_export.config import ToMAConfig
from toma_export.eager.sites import Merger, merger_for
from toma_export.eager.merge_state import ToMAState
from toma_export.errors import UnsupportedModelError


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.unflatten(-1, (-1, head_dim))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Flux's interleaved-pair rotary embedding with per-batch tables ``cos, sin`` ``(B, S, D)``."""
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(-2)
    return (x.float() * cos[:, :, None] + rotated.float() * sin[:, :, None]).to(x.dtype)


def joint_attention(
    attn: Any,
    img: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    txt: torch.Tensor | None = None,
    kv_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flux attention over ``[txt; img]`` with per-batch RoPE ``(B, S_txt + M, D)``.

    ``txt`` is given for double-stream blocks (its own projections); single-stream blocks pass
    the concatenated sequence as ``img``. ``kv_index`` (ToDo) keeps only those key/value rows.
    Returns the image (or whole) output projected, and the projected text output.
    """
    hd = attn.head_dim
    q, k, v = (_heads(proj(img), hd) for proj in (attn.to_q, attn.to_k, attn.to_v))
    q, k = attn.norm_q(q), attn.norm_k(k)
    if txt is not None:
        tq, tk, tv = (_heads(proj(txt), hd) for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        tq, tk = attn.norm_added_q(tq), attn.norm_added_k(tk)
        q, k, v = torch.cat([tq, q], 1), torch.cat([tk, k], 1), torch.cat([tv, v], 1)
    cos, sin = rope
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    if kv_index is not None:
        k, v = k[:, kv_index], v[:, kv_index]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = out.transpose(1, 2).flatten(2).to(q.dtype)
    if txt is None:
        return out, None
    t_out, i_out = out.split([txt.shape[1], img.shape[1]], dim=1)
    i_out = attn.to_out[1](attn.to_out[0](i_out.contiguous()))
    return i_out, attn.to_add_out(t_out.contiguous())


class FluxSite:
    """Shared per-block logic: the grid, the merger for the image tokens and their RoPE rows."""

    state: ToMAState
    grid: list[tuple[int, int] | None]

    def __init__(self, state: ToMAState, name: str, grid: list[tuple[int, int] | None]):
        self.state = state
        self.name = name
        self.grid = grid  # one-element box the model's pre-hook fills per step

    def image_merger(self, features: torch.Tensor, first: bool) -> Merger | None:
        g = self.grid[0]
        if g is None or self.state.config.method in ("todo", "none"):
            return None
        return merger_for(self.state, self.name, features, g[0], g[1], first_in_block=first)

    def kv_index(self, text_len: int, device: torch.device) -> torch.Tensor | None:
        """ToDo: indices of ``[txt; downsampled img]`` keys/values, or None."""
        g = self.grid[0]
        if g is None or self.state.config.method != "todo":
            return None
        img = downsample_index(g[0], g[1], self.state.config.ratio, device) + text_len
        return torch.cat([torch.arange(text_len, device=device), img])

    @staticmethod
    def rope_rows(
        rope: tuple[torch.Tensor, torch.Tensor], text_len: int, batch: int, positions: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-batch RoPE tables: text rows, then image rows at ``positions`` (all when None)."""
        out = []
        for table in rope:
            if positions is None:
                out.append(table.unsqueeze(0).expand(batch, -1, -1))
                continue
            img_rows = table[text_len:][positions]  # (B, M, D)
            out.append(torch.cat([table[:text_len].unsqueeze(0).expand(batch, -1, -1), img_rows], 1))
        return out[0], out[1]


def _merging_forward(forward: Any) -> Any:
    """Run ``forward`` when this block can merge; otherwise diffusers' own forward, unchanged.

    No known image grid, no RoPE, or extra attention kwargs (IP-adapters...) mean no merging.
    """

    @functools.wraps(forward)
    def wrapped(
        self: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        args = (hidden_states, encoder_hidden_states, temb, image_rotary_emb, joint_attention_kwargs)
        if self._toma_site.grid[0] is None or image_rotary_emb is None or joint_attention_kwargs:
            return self._toma_parent.forward(self, *args)
        return forward(self, *args)

    return wrapped


@_merging_forward
def _double_forward(
    self: Any,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor],
    joint_attention_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    site: FluxSite = self._toma_site
    cfg = site.state.config
    b, text_len = hidden_states.shape[0], encoder_hidden_states.shape[1]
    norm_h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
    norm_e, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(encoder_hidden_states, emb=temb)

    merger = site.image_merger(norm_h, first=True) if cfg.merge_attn else None
    q_img = norm_h if merger is None else merger.merge(norm_h)
    rope = site.rope_rows(image_rotary_emb, text_len, b, None if merger is None else merger.positions())
    attn_out, ctx_out = joint_attention(self.attn, q_img, rope, txt=norm_e, kv_index=site.kv_index(text_len, q_img.device))
    if merger is not None:
        attn_out = merger.unmerge(attn_out)
    hidden_states = hidden_states + gate_msa.unsqueeze(1) * attn_out

    norm_h = self.norm2(hidden_states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    mlp_merger = site.image_merger(norm_h, first=not cfg.merge_attn) if cfg.merge_mlp else None
    if mlp_merger is None:
        ff_out = self.ff(norm_h)
    else:
        ff_out = mlp_merger.unmerge(self.ff(mlp_merger.merge(norm_h)))
    hidden_states = hidden_states + gate_mlp.unsqueeze(1) * ff_out

    encoder_hidden_states = encoder_hidden_states + c_gate_msa.unsqueeze(1) * ctx_out
    norm_e = self.norm2_context(encoder_hidden_states) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
    encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * self.ff_context(norm_e)
    if encoder_hidden_states.dtype == torch.float16:
        encoder_hidden_states = encoder_hidden_states.clip(-65504, 65504)
    return encoder_hidden_states, hidden_states


@_merging_forward
def _single_forward(
    self: Any,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor],
    joint_attention_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    site: FluxSite = self._toma_site
    b, text_len = hidden_states.shape[0], encoder_hidden_states.shape[1]
    residual = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    norm, gate = self.norm(residual, emb=temb)
    norm_txt, norm_img = norm[:, :text_len], norm[:, text_len:]
    # Attention and the parallel MLP share one token sequence, so merge_attn governs both here.
    merger = site.image_merger(norm_img, first=True) if site.state.config.merge_attn else None
    if merger is not None:
        norm = torch.cat([norm_txt, merger.merge(norm_img)], dim=1)
    rope = site.rope_rows(image_rotary_emb, text_len, b, None if merger is None else merger.positions())
    mlp = self.act_mlp(self.proj_mlp(norm))
    attn_out, _ = joint_attention(self.attn, norm, rope, kv_index=site.kv_index(text_len, norm.device))
    out = gate.unsqueeze(1) * self.proj_out(torch.cat([attn_out, mlp], dim=2))
    if merger is not None:
        out = torch.cat([out[:, :text_len], merger.unmerge(out[:, text_len:])], dim=1)
    hidden_states = residual + out
    if hidden_states.dtype == torch.float16:
        hidden_states = hidden_states.clip(-65504, 65504)
    return hidden_states[:, :text_len], hidden_states[:, text_len:]


def _swap(block: Any, forward: Any, site: FluxSite) -> None:
    parent = type(block)
    block.__class__ = type(f"ToMA{parent.__name__}", (parent,), {"forward": forward, "_toma_parent": parent})
    block._toma_site = site


def _unswap(block: torch.nn.Module) -> None:
    parent = getattr(type(block), "_toma_parent", None)
    if parent is not None:
        block.__class__ = parent
        del block._toma_site


def image_grid(img_ids: torch.Tensor) -> tuple[int, int] | None:
    """(rows, cols) of Flux's row-major image tokens from their position ids ``(N, 3)``.

    None when the ids are not a full row-major grid (then nothing is merged). One host sync per
    call: the model calls it only when the ids change shape or a generation starts.
    """
    ids = img_ids[0] if img_ids.ndim == 3 else img_ids
    rows, cols = ids[:, 1].round().long(), ids[:, 2].round().long()
    r0, c0 = int(rows.min()), int(cols.min())
    h, w = int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1
    if h * w != ids.shape[0]:
        return None
    expected = torch.arange(h * w, device=ids.device)
    if not torch.equal((rows - r0) * w + (cols - c0), expected):
        return None
    return h, w


class FluxPatch:
    """ToMA (or a baseline) on every double- and single-stream block of a Flux transformer."""

    def __init__(self, model: Any, config: ToMAConfig):
        self.model = model
        self.config = config
        self.state = ToMAState(config)
        self.grid: list[tuple[int, int] | None] = [None]
        self._grid_key: tuple | None = None
        self.blocks: list[Any] = []
        self.handles: list[Any] = []

    def install(self) -> None:
        if any(getattr(b.attn, "fused_projections", False) for b in self.model.transformer_blocks):
            raise UnsupportedModelError(
                "this Flux transformer has fused QKV projections; call unfuse_qkv_projections() before apply()."
            )
        self.handles.append(self.model.register_forward_pre_hook(self._begin, with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(self._end))
        if not self.config.active:
            return
        for i, block in enumerate(self.model.transformer_blocks):
            _swap(block, _double_forward, FluxSite(self.state, f"double.{i}", self.grid))
            self.blocks.append(block)
        for i, block in enumerate(self.model.single_transformer_blocks):
            _swap(block, _single_forward, FluxSite(self.state, f"single.{i}", self.grid))
            self.blocks.append(block)

    def _begin(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.state.begin_step()
        img_ids = kwargs.get("img_ids", args[5] if len(args) > 5 else None)
        if img_ids is None:
            self.grid[0] = None
            return
        # Reading the grid off the ids is a host sync: once per generation (step 0) or shape change.
        key = (tuple(img_ids.shape), img_ids.device)
        if key != self._grid_key or self.state.step == 0:
            self.grid[0] = image_grid(img_ids)
            self._grid_key = key

    def _end(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self.state.end_step()

    def remove(self) -> None:
        for block in self.blocks:
            _unswap(block)
        self.blocks.clear()
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
