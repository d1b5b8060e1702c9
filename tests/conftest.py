"""Shared fixtures: the embedded tiny models, built once per session (seeded, random weights)."""

from __future__ import annotations

import pytest
import torch

from toma_export.models import load_model


@pytest.fixture(scope="session")
def sdxl_tiny() -> torch.nn.Module:
    return load_model("sdxl-tiny")


@pytest.fixture(scope="session")
def flux_tiny() -> torch.nn.Module:
    return load_model("flux-tiny")


@pytest.fixture(scope="session")
def sd15_tiny() -> torch.nn.Module:
    return load_model("sd15-tiny")
