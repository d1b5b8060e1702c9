"""Shared fixtures: the embedded tiny models, built once per session (seeded, random weights)."""

from __future__ import annotations

import os

import pytest
import torch

from toma_export.models import load_model


def _share_the_cores() -> None:
    """Under pytest-xdist (``make test``: two workers), each worker gets its share of the cores for torch's
    intra-op threads, and through ``OMP_NUM_THREADS`` the CLI subprocesses it starts do too: two workers
    with one thread per core each would oversubscribe the cores and spin against each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


_share_the_cores()

# diffusers and transformers attach a StreamHandler to the sys.stderr of the moment their logging is
# first used; configured here, it is the session's stream rather than one test's capsys stream,
# which is closed after that test (a later warning would then print a "Logging error" traceback).
from diffusers.utils import logging as _diffusers_logging  # noqa: E402
from transformers.utils import logging as _transformers_logging  # noqa: E402

_diffusers_logging.get_logger("diffusers")
_transformers_logging.get_logger("transformers")


@pytest.fixture(scope="session")
def sdxl_tiny() -> torch.nn.Module:
    return load_model("sdxl-tiny")


@pytest.fixture(scope="session")
def flux_tiny() -> torch.nn.Module:
    return load_model("flux-tiny")


@pytest.fixture(scope="session")
def sd15_tiny() -> torch.nn.Module:
    return load_model("sd15-tiny")


@pytest.fixture
def one_thread_quiet_fakes():
    """One torch thread (graph-pass tests trace many small graphs) and no fake-tensor log noise."""
    import logging

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)
    yield
    torch.set_num_threads(n)
