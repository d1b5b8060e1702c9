"""Bipartite soft matching (ToMeSD), with CA-ToMe's similarity threshold.

One destination per ``sy x sx`` window (top-left, or random with a generator), every other token
a source; each source links to its most similar destination and the ``r`` best-linked sources are
averaged into their destinations. With ``threshold``, links below it are not merged (CA-ToMe), so
the merged count depends on the data: the baseline needs a host sync and dynamic shapes, which is
what ToMA avoids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BipartiteMerge:
    """Explicit-index form of a bipartite merge of ``N`` tokens into ``N - r``."""

    num_tokens: int
    src: torch.Tensor  # (Ns,) grid index of every source token
    dst: torch.Tensor  # (Nd,) grid index of every destination token
    unm_idx: torch.Tensor  # (B, Ns - r) positions in src kept unmerged
    src_idx: torch.Tensor  # (B, r) positions in src merged away
    dst_idx: torch.Tensor  # (B, r) destination (position in dst) of each merged source

    @property
    def r(self) -> int:
        return self.src_idx.shape[1]

    def _rows(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, 1, idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1]))

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        src, dst = x[:, self.src], x[:, self.dst]
        unm = self._rows(src, self.unm_idx)
        moved = self._rows(src, self.src_idx)
        index = self.dst_idx.unsqueeze(-1).expand(*self.dst_idx.shape, x.shape[-1])
        dst = dst.scatter_reduce(1, index, moved, reduce="mean")
        return torch.cat([unm, dst], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, c = y.shape
        n_unm = self.unm_idx.shape[1]
        unm, dst = y[:, :n_unm], y[:, n_unm:]
        out = y.new_zeros(b, self.num_tokens, c)
        out[:, self.dst] = dst
        src_pos = self.src.to(y.device)
        out.scatter_(1, src_pos[self.unm_idx].unsqueeze(-1).expand(b, n_unm, c), unm)
        out.scatter_(1, src_pos[self.src_idx].unsqueeze(-1).expand(b, self.r, c), self._rows(dst, self.dst_idx))
        return out

    def positions(self) -> torch.Tensor:
        """Grid index of each merged token ``(B, N - r)``: unmerged sources, then destinations."""
        b = self.unm_idx.shape[0]
        return torch.cat([self.src.to(self.unm_idx.device)[self.unm_idx], self.dst.expand(b, -1)], dim=1)


def destination_mask(
    h: int, w: int, sx: int = 2, sy: int = 2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Boolean ``(h*w,)`` mask of destination tokens: one per full ``sy x sx`` window."""
    hs, ws = h // sy, w // sx
    if generator is None:
        choice = torch.zeros(hs, ws, dtype=torch.long)
    else:
        choice = torch.randint(sy * sx, (hs, ws), generator=generator, device=generator.device).cpu()
    window = F.one_hot(choice, sy * sx).bool().reshape(hs, ws, sy, sx).permute(0, 2, 1, 3)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[: hs * sy, : ws * sx] = window.reshape(hs * sy, ws * sx)
    return mask.flatten()


def bipartite_match(
    metric: torch.Tensor,
    h: int,
    w: int,
    r: int,
    *,
    sx: int = 2,
    sy: int = 2,
    generator: torch.Generator | None = None,
    threshold: float | None = None,
) -> BipartiteMerge:
    """Match ``metric`` ``(B, h*w, C)`` and return the merge of (up to) ``r`` tokens."""
    b, n, _ = metric.shape
    mask = destination_mask(h, w, sx, sy, generator).to(metric.device)
    # Sources then destinations, each in grid order; a stable sort keeps shapes static (no nonzero).
    n_dst = (h // sy) * (w // sx)
    order_all = torch.argsort(mask.to(torch.int8), stable=True)
    src, dst = order_all[: n - n_dst], order_all[n - n_dst :]
    with torch.no_grad():
        m = F.normalize(metric.float(), dim=-1)
        scores = m[:, src] @ m[:, dst].transpose(-1, -2)
        best, best_dst = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
        r = min(r, src.numel())
        if threshold is not None:
            # CA-ToMe: only links at or above the threshold merge; one count for the whole batch.
            r = min(r, int((best >= threshold).sum(dim=-1).min().item()))
    return BipartiteMerge(
        num_tokens=n,
        src=src,
        dst=dst,
        unm_idx=order[:, r:],
        src_idx=order[:, :r],
        dst_idx=torch.gather(best_dst, 1, order[:, :r]),
    )
