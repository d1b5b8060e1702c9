"""Known third-party noise, hidden around the calls that raise it; ``--verbose`` shows it.

Each entry below is one message a library prints on every run here that tells a user nothing they
can act on. They are matched by category or logger *and* message, and only inside
:func:`library_noise` blocks (around ONNX export and the import of diffusers' pipeline classes), so
any other warning, from the same libraries too, still shows. The CLI's ``--verbose`` runs the command
inside :func:`show_library_noise`, which turns every block here into a no-op.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar

#: ``warnings.warn`` calls: (category, message regex).
WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # torch's own pytree code deep-copies LeafSpec objects (run_decompositions, torch.onnx.export), and the
    # class warns on construction since torch 2.10: raised and fixable only inside torch.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)

#: Log records: (logger name, message regex).
LOG_RECORDS: tuple[tuple[str, str], ...] = (
    # torch.onnx's exporter registers torchvision's ops when torchvision exists and logs the four it skips,
    # on every export; no model here uses them.
    ("torch.onnx._internal.exporter._registration", r"torchvision is not installed\. Skipping torchvision::"),
    # diffusers' pipeline modules import transformers' image processors, which fall back to their PIL
    # versions without torchvision; the embedded pipelines use no image processor.
    ("transformers.utils.import_utils",
     r"`\w+ImageProcessor` requires torchvision \(not installed\); falling back to `\w+ImageProcessorPil`"),
    # diffusers' ModelMixin.to(dtype) warns whenever the class lists float32 modules, even when it lists none
    # (the empty list): only that empty case is hidden.
    ("diffusers.models.modeling_utils", r"There are modules in \w+ that should be kept in float32: \[\]\."),
)

_SHOWN: ContextVar[bool] = ContextVar("toma_export_library_noise_shown", default=False)


class _DropMatching(logging.Filter):
    """Drops the records whose message matches ``pattern``; every other record passes."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


@contextmanager
def library_noise() -> Iterator[None]:
    """Hide the messages in :data:`WARNINGS` and :data:`LOG_RECORDS` raised inside the block
    (nothing is hidden inside :func:`show_library_noise`)."""
    if _SHOWN.get():
        yield
        return
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        for category, message in WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for name, message in LOG_RECORDS:
            logger, drop = logging.getLogger(name), _DropMatching(message)
            logger.addFilter(drop)
            stack.callback(logger.removeFilter, drop)
        yield


@contextmanager
def show_library_noise(show: bool = True) -> Iterator[None]:
    """Within this block (``--verbose``), :func:`library_noise` hides nothing."""
    token = _SHOWN.set(show)
    try:
        yield
    finally:
        _SHOWN.reset(token)
