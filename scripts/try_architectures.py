"""Try the ToMA graph pass on current diffusers transformer classes (tiny random configs, CPU).

For each class: build a tiny config, make inputs as its pipeline does, ``rewrite`` at ratio 0.5, and
print the merged sites by kind, the skipped ones, or the ``ToMAError`` reason. Any other exception
is a bug (printed as RAW). Usage: ``python scripts/try_architectures.py [--size 64] [NAME ...]``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from typing import Any, Callable

import torch

import toma_export
from toma_export.errors import ToMAError
from toma_export.models.architectures import ARCHITECTURES, example_inputs_for


def _g(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


def _named(name: str, size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    m = ARCHITECTURES[name][2]()
    return m, example_inputs_for(m, 1, size, size, frames=5)


def chroma(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import ChromaTransformer2DModel

    from toma_export.models.inputs import flux_image_ids

    m = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                 num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6),
                                 approximator_num_channels=8, approximator_hidden_dim=32, approximator_layers=1)
    h = w = size // 16
    L = 8
    kw = dict(hidden_states=_g(1, h * w, 16), encoder_hidden_states=_g(1, L, 32), timestep=torch.full((1,), 0.5),
              img_ids=flux_image_ids(h, w), txt_ids=torch.zeros(L, 3),
              attention_mask=torch.ones(1, L + h * w, dtype=torch.bool))
    return m, kw


def hunyuan_image(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import HunyuanImageTransformer2DModel

    m = HunyuanImageTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                       num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=(1, 1),
                                       text_embed_dim=32, rope_axes_dim=(8, 8))
    s = size // 16  # HunyuanImage-2.1's VAE downsamples 32x; a 16x16-pixel token is close enough for a trial
    kw = dict(hidden_states=_g(1, 4, s, s), timestep=torch.full((1,), 500.0), encoder_hidden_states=_g(1, 8, 32),
              encoder_attention_mask=torch.ones(1, 8, dtype=torch.long))
    return m, kw


def ltx(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import LTXVideoTransformer3DModel

    m = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16,
                                   cross_attention_dim=32, num_layers=1, caption_channels=16)
    f, h, w = 2, size // 32, size // 32
    kw = dict(hidden_states=_g(1, f * h * w, 8), encoder_hidden_states=_g(1, 8, 16), timestep=torch.full((1,), 500.0),
              encoder_attention_mask=torch.ones(1, 8, dtype=torch.long), num_frames=f, height=h, width=w)
    return m, kw


def cogview4(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import CogView4Transformer2DModel

    m = CogView4Transformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16,
                                   num_attention_heads=2, text_embed_dim=32, time_embed_dim=32, condition_dim=16,
                                   rope_axes_dim=(8, 8))
    s = size // 8
    sz = torch.tensor([[size, size]], dtype=torch.float32)
    kw = dict(hidden_states=_g(1, 4, s, s), encoder_hidden_states=_g(1, 8, 32), timestep=torch.full((1,), 500.0),
              original_size=sz, target_size=sz, crop_coords=torch.zeros(1, 2))
    return m, kw


def sana(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import SanaTransformer2DModel

    m = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                               num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
                               caption_channels=32, sample_size=size // 32, patch_size=1)
    s = size // 32  # Sana's DC-AE: 32x
    kw = dict(hidden_states=_g(1, 4, s, s), encoder_hidden_states=_g(1, 8, 32), timestep=torch.full((1,), 500.0))
    return m, kw


def lumina2(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import Lumina2Transformer2DModel

    m = Lumina2Transformer2DModel(sample_size=size // 8, patch_size=2, in_channels=4, hidden_size=32, num_layers=1,
                                  num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1, multiple_of=16,
                                  axes_dim_rope=(4, 6, 6), axes_lens=(64, 64, 64), cap_feat_dim=32)
    s = size // 8
    kw = dict(hidden_states=_g(1, 4, s, s), timestep=torch.full((1,), 0.5), encoder_hidden_states=_g(1, 8, 32),
              encoder_attention_mask=torch.ones(1, 8, dtype=torch.bool))
    return m, kw


def pixart(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import PixArtTransformer2DModel

    m = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=1,
                                 cross_attention_dim=32, sample_size=size // 8, patch_size=2, norm_type="ada_norm_single",
                                 caption_channels=24, use_additional_conditions=False)
    kw = dict(hidden_states=_g(1, 4, size // 8, size // 8), encoder_hidden_states=_g(1, 8, 24),
              timestep=torch.full((1,), 500.0), added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    return m, kw


def sd3(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import SD3Transformer2DModel

    m = SD3Transformer2DModel(sample_size=size // 8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=16,
                              num_attention_heads=2, joint_attention_dim=24, caption_projection_dim=32,
                              pooled_projection_dim=16, out_channels=4, pos_embed_max_size=32)
    kw = dict(hidden_states=_g(1, 4, size // 8, size // 8), encoder_hidden_states=_g(1, 8, 24),
              pooled_projections=_g(1, 16), timestep=torch.full((1,), 500.0))
    return m, kw


def dit(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import DiTTransformer2DModel

    m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, num_layers=1,
                              sample_size=size // 8, patch_size=2, num_embeds_ada_norm=1000)
    kw = dict(hidden_states=_g(1, 4, size // 8, size // 8), timestep=torch.full((1,), 500).long(),
              class_labels=torch.tensor([3]))
    return m, kw


TRIALS: dict[str, tuple[str, Callable[[int], tuple[torch.nn.Module, dict[str, Any]]]]] = {
    **{n: (ARCHITECTURES[n][2].__name__, (lambda n: lambda size: _named(n, size))(n)) for n in ARCHITECTURES if n.endswith("-tiny")},
    "chroma": ("ChromaTransformer2DModel", chroma),
    "hunyuan-image": ("HunyuanImageTransformer2DModel", hunyuan_image),
    "ltx-video": ("LTXVideoTransformer3DModel", ltx),
    "cogview4": ("CogView4Transformer2DModel", cogview4),
    "sana": ("SanaTransformer2DModel", sana),
    "lumina2": ("Lumina2Transformer2DModel", lumina2),
    "pixart": ("PixArtTransformer2DModel", pixart),
    "sd3": ("SD3Transformer2DModel", sd3),
    "dit": ("DiTTransformer2DModel", dit),
}


def try_one(name: str, size: int) -> str:
    cls, build = TRIALS[name]
    try:
        torch.manual_seed(0)
        model, kw = build(size)
        model.eval()
        cls = type(model).__name__
    except Exception as e:  # noqa: BLE001 - a class we could not build tiny is reported, not tried
        return f"{name:<16} {cls:<34} not constructed tiny: {type(e).__name__}: {str(e)[:120]}"
    try:
        program = toma_export.rewrite(model, kw, toma_export.ToMAConfig(ratio=0.5))
        with torch.no_grad():
            out = program(**kw)
        first = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        finite = bool(torch.isfinite(first).all())
    except ToMAError as e:
        return f"{name:<16} {cls:<34} ToMAError: {str(e).splitlines()[0][:200]}"
    except Exception as e:  # noqa: BLE001 - the point of this script: any raw exception is a bug
        return f"{name:<16} {cls:<34} RAW {type(e).__name__}: {str(e)[:200]}"
    eager = _try_apply(model, kw)
    if not program.sites and not program.skipped:
        return (f"{name:<16} {cls:<34} no merge sites found (no norm -> linears -> SDPA / MLP region over an image "
                f"grid; runs unmerged) finite={finite}; apply: {eager}")
    merged = Counter(s.kind for s in program.sites)
    skipped = Counter(s.kind for s in program.skipped)
    reasons = sorted({s.reason.split(":")[0][:60] for s in program.skipped})
    grid = program.sites[0].grid if program.sites else (program.skipped[0].grid if program.skipped else None)
    return (f"{name:<16} {cls:<34} merged {dict(merged) or '{}'} skipped {dict(skipped) or '{}'} grid {grid} "
            f"finite={finite}; apply: {eager}" + (f" [{'; '.join(reasons)}]" if reasons else ""))


def _try_apply(model: torch.nn.Module, kw: dict[str, Any]) -> str:
    """Eager ``apply`` and one call: "merged" or the ToMAError's first words; RAW is a bug."""
    try:
        toma_export.apply(model, toma_export.ToMAConfig(ratio=0.5))
        try:
            with torch.no_grad():
                model(**kw)
            return "merged"
        finally:
            toma_export.remove(model)
    except ToMAError as e:
        return f"ToMAError ({str(e).splitlines()[0][:80]})"
    except Exception as e:  # noqa: BLE001 - any raw exception is a bug
        return f"RAW {type(e).__name__}: {str(e)[:120]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", default=list(TRIALS))
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    args = ap.parse_args()
    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)
    torch.set_num_threads(1)
    print(f"diffusers transformer classes through toma_export.rewrite and eager apply at ratio 0.5, "
          f"{args.size}x{args.size} px")
    for name in args.names:
        t = time.perf_counter()
        line = try_one(name, args.size)
        print(f"{line}  ({time.perf_counter() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
