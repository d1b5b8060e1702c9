"""Image-quality metrics for real weights: DINO delta, CLIP score, FID (or FD on DINO features).

The heavy parts (feature networks) are injectable callables so the arithmetic is testable with
tiny random extractors; builders load them from *local* folders only (transformers,
torchmetrics / torch-fidelity weights), and raise a clear error naming what to install or pass.

- DINO delta: mean over prompts of ``1 - cos(f(merged), f(unmerged))`` on DINO CLS features of
  images from the same prompt and seed: 0 = same image as without merging.
- CLIP score: ``100 * max(0, cos(image, text))`` averaged (torchmetrics' definition).
- FID: Frechet distance between Gaussian fits of two feature sets (Inception pool features
  for FID proper; DINO features give "FD-DINO" when no Inception weights are available).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ImageFeatures = Callable[[torch.Tensor], torch.Tensor]  # (N, 3, H, W) in [0, 1] -> (N, D)
TextFeatures = Callable[[Sequence[str]], torch.Tensor]  # prompts -> (N, D)


class MissingDependency(RuntimeError):
    """An optional package or local weight folder needed for a metric is absent."""


def dino_delta(features: ImageFeatures, merged: torch.Tensor, reference: torch.Tensor) -> float:
    a, b = features(merged).double(), features(reference).double()
    return float((1 - F.cosine_similarity(a, b, dim=-1)).mean())


def clip_score(image_features: ImageFeatures, text_features: TextFeatures, images: torch.Tensor,
               prompts: Sequence[str]) -> float:
    i, t = image_features(images).double(), text_features(prompts).double()
    return float((100 * F.cosine_similarity(i, t, dim=-1).clamp_min(0)).mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` and ``b`` ``(N, D)``."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if min(len(a), len(b)) < 2:
        raise ValueError("FID needs at least 2 images per set (hundreds for a meaningful value)")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fid(features: ImageFeatures, images: torch.Tensor, reference: torch.Tensor) -> float:
    return frechet_distance(features(images).double().numpy(), features(reference).double().numpy())


@dataclass
class Extractors:
    """The feature networks; any may be None (that metric is skipped)."""

    dino: ImageFeatures | None = None
    clip_image: ImageFeatures | None = None
    clip_text: TextFeatures | None = None
    fid: ImageFeatures | None = None
    fid_name: str = "FID"


def metrics(ex: Extractors, images: torch.Tensor, reference: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """Every available metric of ``images`` against the unmerged ``reference`` images."""
    out: dict[str, float] = {}
    if ex.dino is not None:
        out["dino_delta"] = dino_delta(ex.dino, images, reference)
    if ex.clip_image is not None and ex.clip_text is not None:
        out["clip_score"] = clip_score(ex.clip_image, ex.clip_text, images, prompts)
    if ex.fid is not None and len(images) >= 2:
        out[ex.fid_name.lower().replace("-", "_")] = fid(ex.fid, images, reference)
    return out


# -- builders from local folders (users with real weights) -----------------------------
def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependency("DINO and CLIP metrics need `pip install transformers`.") from exc
    return transformers


@torch.inference_mode()
def dino_from_folder(path: str, device: str = "cpu") -> ImageFeatures:
    """DINO / DINOv2 CLS features from a local transformers folder (e.g. facebook/dinov2-base)."""
    tf = _transformers()
    model = tf.AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    proc = tf.AutoImageProcessor.from_pretrained(path, local_files_only=True)

    @torch.inference_mode()
    def features(images: torch.Tensor) -> torch.Tensor:
        batch = proc(images=list(images.float().cpu()), return_tensors="pt", do_rescale=False).to(device)
        return model(**batch).last_hidden_state[:, 0].float().cpu()

    return features


def clip_from_folder(path: str, device: str = "cpu") -> tuple[ImageFeatures, TextFeatures]:
    """CLIP image and text embeddings from a local transformers folder (e.g. openai/clip-vit-large-patch14)."""
    tf = _transformers()
    model = tf.CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
    proc = tf.CLIPProcessor.from_pretrained(path, local_files_only=True)

    @torch.inference_mode()
    def image(images: torch.Tensor) -> torch.Tensor:
        batch = proc(images=list(images.float().cpu()), return_tensors="pt", do_rescale=False).to(device)
        return model.get_image_features(**batch).float().cpu()

    @torch.inference_mode()
    def text(prompts: Sequence[str]) -> torch.Tensor:
        batch = proc(text=list(prompts), return_tensors="pt", padding=True, truncation=True).to(device)
        return model.get_text_features(**batch).float().cpu()

    return image, text


def inception_from_weights(path: str, device: str = "cpu") -> ImageFeatures:
    """Inception-v3 pool features (FID proper) from a local torch-fidelity weight file, via torchmetrics."""
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as exc:
        raise MissingDependency("FID needs `pip install torchmetrics torch-fidelity` "
                                "(or pass --fid-features dino for FD on DINO features).") from exc
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                             feature_extractor_weights_path=path).to(device).eval()

    @torch.inference_mode()
    def features(images: torch.Tensor) -> torch.Tensor:
        return net((images.clamp(0, 1) * 255).to(torch.uint8).to(device)).float().cpu()

    return features
