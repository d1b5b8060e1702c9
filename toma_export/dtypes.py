"""The one map from an artifact precision (:data:`toma_export.vocabulary.PRECISIONS`) to its torch dtype.

``build`` casts the model to it before capture, the artifact runtime and the drop-in wrapper feed the
engine in it, torch-tensorrt enables it.
"""

from __future__ import annotations

from typing import Final

import torch

from toma_export.errors import ToMAError
from toma_export.vocabulary import PRECISIONS, Precision

DTYPES: Final[dict[Precision, torch.dtype]] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_dtype(name: object, error: type[ToMAError], what: str, fix: str) -> torch.dtype:
    """The dtype of precision ``name``; an unknown one raises ``error`` naming ``what`` it is, the
    precisions there are, and ``fix``."""
    for precision in PRECISIONS:
        if precision == name:
            return DTYPES[precision]
    raise error(f"{what} {name!r} is not one of {', '.join(PRECISIONS)}; {fix}.")
