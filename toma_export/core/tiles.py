"""Tile layouts: how a latent token grid is cut into non-overlapping tiles for local merging.

Selection and merge run inside tiles (docs/DESIGN.md, "Method") while attention stays global. Cutting the
grid is a reshape/permute (no gather, no scatter), so it exports to static ONNX graphs.

Grids that tiles do not divide: the largest tile-divisible top-left region is tiled and the
leftover border (the right columns beside it, then the bottom rows) is carried through unmerged
("rest" tokens). ``remainder="error"`` refuses such grids instead. A tile larger than the grid in
either side (not one whole tile fits) is always refused: it would merge nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch._subclasses.fake_tensor import is_fake

from toma_export.errors import ToMAConfigError


@dataclass(frozen=True)
class TileLayout:
    """A row-major ``h x w`` token grid cut into ``th x tw`` tiles plus an unmerged border.

    ``frames > 1``: a frame-major video grid, ``h`` counting the rows of all ``frames`` stacked frames
    (``h // frames`` each). Tiles stay inside a frame and each frame keeps its own border (right
    columns, bottom rows), so a tile height need not divide the frame height (Wan at 480p: 30 rows).

    ``tile_major``: the tokens already arrive in tile-major order (:meth:`to_tile_order`: every tile's
    slots, then the border), so :meth:`split` and :meth:`join` are views instead of permuting copies.
    A region that keeps this order across several merged sub-layers pays one permutation in and one
    out instead of one per split and join.
    """

    h: int
    w: int
    th: int
    tw: int
    frames: int = 1
    tile_major: bool = False
    _counts: tuple[int, int, int, int, int] = field(init=False, repr=False, compare=False)

    @classmethod
    def create(
        cls, h: int, w: int, tile: tuple[int, int], remainder: str = "keep", frames: int = 1, tile_major: bool = False
    ) -> TileLayout:
        th, tw = tile
        if th < 1 or tw < 1:
            raise ToMAConfigError(f"tile={tile}: tile sides must be >= 1; use e.g. tile=(4, 4).")
        if frames < 1 or h % frames:
            raise ValueError(f"a {h}-row grid cannot hold {frames} frames of equal height")
        fh = h // frames
        grid = f"{fh}x{w} token grid" + (f" (per frame, {frames} frames)" if frames > 1 else "")
        if th > fh or tw > w:
            # Not one whole tile fits, so a merged site would merge nothing: an error, whatever the
            # remainder rule (remainder="keep" only covers a border beside at least one whole tile).
            raise ToMAConfigError(
                f"tile={tile} is larger than the {grid} of a merged site, so nothing would merge. "
                f"Use a tile of at most {fh}x{w} (e.g. tile=({min(th, fh)}, {min(tw, w)})), a larger image, or fewer "
                "UNet levels (max_downsample)."
            )
        if remainder == "error" and (fh % th or w % tw):
            raise ToMAConfigError(
                f"tile={tile} does not divide the {grid} and remainder='error'. "
                f"Pick a tile that divides it, or set remainder='keep' to leave the border tokens unmerged."
            )
        return cls(h, w, th, tw, frames, tile_major)

    def __post_init__(self) -> None:
        # The counts every split, join and merge asks for, computed once per layout (host time per site).
        fh = self.h // self.frames
        ty, tx = fh // self.th, self.w // self.tw
        tiles = self.frames * ty * tx
        object.__setattr__(self, "_counts", (fh, ty, tx, tiles, self.h * self.w - tiles * self.th * self.tw))

    @property
    def frame_h(self) -> int:
        return self._counts[0]

    @property
    def tiles_y(self) -> int:
        """Tile rows per frame."""
        return self._counts[1]

    @property
    def tiles_x(self) -> int:
        return self._counts[2]

    @property
    def num_tiles(self) -> int:
        return self._counts[3]

    @property
    def tile_size(self) -> int:
        return self.th * self.tw

    @property
    def num_tokens(self) -> int:
        return self.h * self.w

    @property
    def num_rest(self) -> int:
        return self._counts[4]

    def merged_count(self, k: int) -> int:
        """Image tokens after merging with ``k`` destinations per tile (the border stays unmerged)."""
        return self.num_tiles * k + self.num_rest

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, N, C)`` -> tiles ``(B, T, S, C)`` (frame, tile row, tile column order) and border
        ``(B, R, C)`` (every frame's right columns, then every frame's bottom rows)."""
        b, n, c = x.shape
        if n != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens for a {self.h}x{self.w} grid, got {n}")
        if self.tile_major:
            if not self.num_rest:
                return x.unflatten(1, (self.num_tiles, self.tile_size)), x[:, :0]
            cut = self.num_tiles * self.tile_size
            return x[:, :cut].unflatten(1, (self.num_tiles, self.tile_size)), x[:, cut:]
        f, mh, mw = self.frames, self.tiles_y * self.th, self.tiles_x * self.tw
        grid = x.reshape(b, f, self.frame_h, self.w, c)
        main = grid[:, :, :mh, :mw] if self.num_rest else grid
        tiles = (
            main.reshape(b, f, self.tiles_y, self.th, self.tiles_x, self.tw, c)
            .permute(0, 1, 2, 4, 3, 5, 6)
            .reshape(b, self.num_tiles, self.tile_size, c)
        )
        if not self.num_rest:
            return tiles, x[:, :0]
        right = grid[:, :, :mh, mw:].reshape(b, -1, c)
        bottom = grid[:, :, mh:].reshape(b, -1, c)
        return tiles, torch.cat([right, bottom], dim=1)

    def join(self, tiles: torch.Tensor, rest: torch.Tensor | None) -> torch.Tensor:
        """Inverse of :meth:`split` (``rest`` may be None where there is no border).

        The row-major result is never a view: its last op is the copying reshape or a ``cat``. A block
        output that is a view where the unmerged block's is not makes dynamo compile one more variant
        of every repeated block (it guards on the strides of an input's ``_base``)."""
        if self.tile_major:
            flat = tiles.flatten(1, 2)
            return torch.cat([flat, rest], dim=1) if rest is not None and rest.shape[1] else flat
        b, _, _, c = tiles.shape
        f, mh, mw = self.frames, self.tiles_y * self.th, self.tiles_x * self.tw
        grid = tiles.reshape(b, f, self.tiles_y, self.tiles_x, self.th, self.tw, c).permute(0, 1, 2, 4, 3, 5, 6)
        if not self.num_rest:
            return grid.reshape(b, self.num_tokens, c)
        assert rest is not None, "a layout with border tokens joins its border back"
        n_right = f * mh * (self.w - mw)
        right = rest[:, :n_right].reshape(b, f, mh, self.w - mw, c)
        bottom = rest[:, n_right:].reshape(b, f, (self.frame_h - mh) * self.w, c)
        top = torch.cat([grid.reshape(b, f, mh, mw, c), right], dim=3).flatten(2, 3)
        return torch.cat([part for i in range(f) for part in (top[:, i], bottom[:, i])], dim=1)

    @property
    def row_major(self) -> TileLayout:
        """This layout over row-major tokens."""
        return self._other_order() if self.tile_major else self

    @property
    def in_tile_order(self) -> TileLayout:
        """This layout over tile-major tokens."""
        return self if self.tile_major else self._other_order()

    def _other_order(self) -> TileLayout:
        """The same layout in the other token order, made once per layout in eager calls (a block
        asks for it twice per forward); built in-graph while tracing."""
        if torch.compiler.is_compiling():
            return replace(self, tile_major=not self.tile_major)
        other = self.__dict__.get("_other")
        if other is None:
            other = replace(self, tile_major=not self.tile_major)
            object.__setattr__(self, "_other", other)
        return other

    def to_tile_order(self, x: torch.Tensor) -> torch.Tensor:
        """Row-major ``(B, N, C)`` -> the same tokens in tile-major order (one copy)."""
        return self.in_tile_order.join(*self.row_major.split(x))

    def from_tile_order(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_tile_order` (one copy)."""
        return self.row_major.join(*self.in_tile_order.split(x))

    @property
    def token_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-major grid index of every tile slot ``(T, S)`` and border token ``(R,)``, on the CPU."""
        return self.token_index_on(torch.device("cpu"))

    def token_index_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """:attr:`token_index` made on ``device`` (an arange and a split there, never a host copy).

        Cached per (layout, device) in eager calls, so a forward makes none after its first call at a
        shape; while tracing (``torch.compile``, export) it is built in-graph instead, and fake
        tensors are never cached (a cache hit must be a real tensor on ``device``)."""
        if torch.compiler.is_compiling():
            return self._build_token_index(device)
        key = (self.row_major, torch.device(device))
        hit = _TOKEN_INDEX.get(key)
        if hit is None:
            with torch.inference_mode(False):  # made inside an inference-mode call, usable outside one
                hit = self._build_token_index(device)
            if not any(is_fake(t) for t in hit):
                _TOKEN_INDEX[key] = hit
        return hit

    def _build_token_index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.arange(self.num_tokens, device=device).reshape(1, -1, 1)
        tiles, rest = self.row_major.split(ids)
        return tiles[0, :, :, 0], rest[0, :, 0]


#: ``(row-major layout, device) -> token_index`` for eager calls (a few KB per layout and device).
_TOKEN_INDEX: dict[tuple[TileLayout, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def unet_level(n: int, latent_h: int, latent_w: int) -> tuple[int, int, int] | None:
    """``(h, w, downsample factor)`` of the UNet level with ``n`` tokens, given the latent size.

    Each UNet downsample is a stride-2 conv with padding 1, so sides go ``ceil(side / 2)``.
    Returns ``None`` when no level of the latent has ``n`` tokens.
    """
    h, w, factor = latent_h, latent_w, 1
    while h * w > n:
        h, w, factor = -(-h // 2), -(-w // 2), factor * 2
    return (h, w, factor) if h * w == n else None
