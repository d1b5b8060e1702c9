"""The shared vocabulary (:mod:`toma_export.vocabulary`) loads without torch, so the command line's
parser can be built from it; the library's tables are keyed by it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toma_export import dtypes, vocabulary
from toma_export.errors import ToMAConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_the_vocabulary_and_the_method_table_import_no_torch() -> None:
    code = ("import json, sys; import toma_export.vocabulary, toma_export.methods, toma_export.cli._choices; "
            "print(json.dumps(sorted(m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout) == []


def test_the_dtype_map_covers_every_precision_and_refuses_others() -> None:
    assert [dtypes.precision_dtype(p, ToMAConfigError, "--dtype", "pick one") for p in vocabulary.PRECISIONS] == [
        torch.float32, torch.float16, torch.bfloat16]
    with pytest.raises(ToMAConfigError, match=r"--dtype 'fp8' is not one of fp32, fp16, bf16; pick one\."):
        dtypes.precision_dtype("fp8", ToMAConfigError, "--dtype", "pick one")


def test_sublayer_parse_names_the_choices() -> None:
    assert vocabulary.SubLayer.parse("attn, mlp") == (vocabulary.SubLayer.ATTN, vocabulary.SubLayer.MLP)
    with pytest.raises(ToMAConfigError, match="choose from attn, cross, mlp"):
        vocabulary.SubLayer.parse("attn,ffn")
