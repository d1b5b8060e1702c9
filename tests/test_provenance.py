"""Token provenance on synthetic graphs: a text stream as long as the image grid is told apart by
where its tokens come from (``toma_export.graph.provenance``), through joint attention, a single
stream's cat, slice and split, and residuals."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from toma_export.graph import Grid, find_sites
from toma_export.graph.provenance import Origin, TokenOrigins, _combine, _cut

S, C = 16, 32  # 16 image tokens (a 4x4 grid) and 16 text tokens


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(C), nn.Linear(C, 2 * C), nn.Linear(2 * C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class TwoStreams(nn.Module):
    """Dual-stream joint attention (text and image cat after their projections), then a single
    stream (cat, MLP on the joint sequence, split back), then one MLP per stream."""

    def __init__(self) -> None:
        super().__init__()
        self.img_in, self.txt_in = nn.Linear(8, C), nn.Linear(24, C)
        self.img_norm, self.txt_norm = nn.LayerNorm(C), nn.LayerNorm(C)
        self.img_qkv, self.txt_qkv = nn.Linear(C, 3 * C), nn.Linear(C, 3 * C)
        self.img_out, self.txt_out = nn.Linear(C, C), nn.Linear(C, C)
        self.joint_mlp, self.img_mlp, self.txt_mlp = Mlp(), Mlp(), Mlp()

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        img, txt = self.img_in(hidden_states), self.txt_in(encoder_hidden_states)
        qi, ki, vi = self.img_qkv(self.img_norm(img)).chunk(3, -1)
        qt, kt, vt = self.txt_qkv(self.txt_norm(txt)).chunk(3, -1)
        q, k, v = (torch.cat([t, i], 1).unsqueeze(1) for t, i in ((qt, qi), (kt, ki), (vt, vi)))
        o = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        txt, img = txt + self.txt_out(o[:, :S]), img + self.img_out(o[:, S:])
        joint = self.joint_mlp(torch.cat([txt, img], 1))
        txt, img = joint.split([S, S], 1)
        return self.img_mlp(img) + self.txt_mlp(txt)


def _graph() -> torch.fx.Graph:
    g = torch.Generator().manual_seed(0)
    kw = {"hidden_states": torch.randn(1, S, 8, generator=g), "encoder_hidden_states": torch.randn(1, S, 24, generator=g)}
    return torch.export.export(TwoStreams().eval(), (), kw).run_decompositions({}).graph


def test_streams_of_equal_length_are_told_apart() -> None:
    graph = _graph()
    origins = TokenOrigins(graph)
    by_input = {}
    for n in graph.nodes:
        if n.target is torch.ops.aten.linear.default:
            by_input[n.meta["nn_module_stack"] and list(n.meta["nn_module_stack"].values())[-1][0]] = origins.origin(n.args[0])
    assert by_input["img_mlp.fc1"] is Origin.IMAGE
    assert by_input["txt_mlp.fc1"] is Origin.TEXT
    assert by_input["txt_out"] is Origin.UNKNOWN  # an attention output: no input is reached through it
    assert by_input["joint_mlp.fc1"] is Origin.UNKNOWN  # the joint sequence holds both


def test_sites_merge_the_image_stream_only() -> None:
    """Every text-side sub-layer is as long as the 4x4 grid; only image-side ones become sites, and the
    joint MLP's image span is the part its tokens came from (after the text), not the first hit."""
    sites = find_sites(_graph(), [Grid(4, 4)])
    found = {(s.kind, s.name, s.offset) for s in sites}
    assert ("mlp", "img_mlp.fc1", 0) in found
    assert ("mlp", "joint_mlp.fc1", S) in found
    assert not any(name.startswith(("txt_", "txt_mlp")) for _, name, _ in found), found


def test_segments_cut_and_combine() -> None:
    a, b = frozenset({"a"}), frozenset({"b"})
    segs = ((4, a), (6, b))
    assert _cut(segs, 2, 7) == ((2, a), (3, b))
    assert _combine([segs, ((10, frozenset()),)]) == segs
    assert _combine([segs, ((5, b), (5, a))]) == ((4, a | b), (1, b), (5, a | b))


class ConvTokensWithText(nn.Module):
    """Image tokens from a conv patch embedding (no input reached through it) joined after the text:
    the joint sequence is not all text (ConsisID's ``[text; video]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(4, C, 2, 2)
        self.txt_in = nn.Linear(24, C)
        self.norm, self.fc = nn.LayerNorm(C), nn.Linear(C, C)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        img = self.patch(hidden_states).flatten(2).transpose(1, 2)
        return self.fc(self.norm(torch.cat([self.txt_in(encoder_hidden_states), img], 1)))


def test_a_sequence_with_a_span_of_unknown_source_is_not_text() -> None:
    g = torch.Generator().manual_seed(0)
    kw = {"hidden_states": torch.randn(1, 4, 8, 8, generator=g), "encoder_hidden_states": torch.randn(1, 4, 24, generator=g)}
    graph = torch.export.export(ConvTokensWithText().eval(), (), kw).run_decompositions({}).graph
    origins = TokenOrigins(graph)
    fc = next(n for n in graph.nodes if n.target is torch.ops.aten.linear.default and n.args[1].name.endswith("fc_weight"))
    cat = next(n for n in graph.nodes if n.target is torch.ops.aten.cat.default)
    assert origins.origin(cat) is Origin.UNKNOWN and origins.origin(fc.args[0]) is Origin.UNKNOWN
