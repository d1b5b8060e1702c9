"""The trial table (``toma_export/models/trial_configs.py``): rows are data read by
``scripts/try_architectures.py``; every row builds, resolves to a :class:`ModelSpec` (before and after
loading), makes inputs its model accepts, and a row of a known family takes that family's one example-input
builder instead of its own inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toma_export.models import spec as specs
from toma_export.models.architectures import ARCHITECTURES
from toma_export.models.outputs import first_output
from toma_export.models.trial_configs import TRIALS
from toma_export.models.trials import D, Fill, Randn, Trial, dim, resolve

ROOT = Path(__file__).resolve().parents[1]
SIZE = 128

pytestmark = pytest.mark.usefixtures("one_thread_quiet_fakes")


@pytest.mark.parametrize("name", list(TRIALS))
def test_every_trial_resolves_to_a_spec_and_its_model_takes_its_inputs(name: str) -> None:
    trial = TRIALS[name]
    torch.manual_seed(0)
    model, kwargs = trial.build(SIZE)
    assert type(model).__name__ == trial.class_name
    spec = specs.spec_for(model)
    before = specs.spec_for_config({"_class_name": trial.class_name, **resolve(trial.config, trial.sizes(SIZE))})
    # build checks sides and frames from the config before loading: the same answers as the loaded model's spec
    assert (before.pixel_multiple, before.video) == (spec.pixel_multiple, spec.video)
    if trial.class_name in specs.SPECS_BY_CLASS:
        assert before is spec is specs.SPECS_BY_CLASS[trial.class_name]
        # one example-input builder: a known family's row takes it rather than inputs of its own
        assert trial.inputs is None, f"{name}: {trial.class_name} has a family builder (models.inputs)"
    else:
        assert trial.inputs is not None, f"{name}: {trial.class_name} has no family builder; give it inputs"
    with torch.no_grad():
        out = first_output(model(**kwargs))
    assert out.is_floating_point() and out.numel() > 0 and bool(torch.isfinite(out).all())


def test_embedded_rows_read_the_embedded_configs() -> None:
    """The ``-tiny`` architectures are rows by reference: one home for their configs (``architectures.py``)."""
    tiny = [n for n in ARCHITECTURES if n.endswith("-tiny")]
    assert tiny and all(TRIALS[n].config is ARCHITECTURES[n][1] for n in tiny)
    assert TRIALS["wan-tiny"].frames == 5 and TRIALS["flux2-tiny"].frames == 1  # video families take a clip


def test_inputs_are_seeded_by_shape_and_sizes_follow_the_image() -> None:
    trial = Trial("t", "SD3Transformer2DModel", {}, {"x": Randn(("s8", "f")), "t": Fill((1, "f - 1"), 2.0)},
                  {"f": "lat(9, 4)"})
    dims = trial.sizes(256)
    assert (dims["s8"], dims["s16"], dims["s32"], dims["f"]) == (32, 16, 8, 3)
    a, b = resolve(trial.inputs, dims), resolve(trial.inputs, dims)
    assert torch.equal(a["x"], b["x"]) and a["x"].shape == (32, 3) and a["t"].tolist() == [[2.0, 2.0]]
    assert resolve({"n": [D("s8 * 2 + 1")]}, dims) == {"n": [65]}


def test_a_bad_size_expression_names_what_is_allowed() -> None:
    with pytest.raises(ValueError, match=r"size 's8 \*\* 2': s8 \*\* 2 is not an int, a dim \(s8\)"):
        dim("s8 ** 2", {"s8": 4})
    with pytest.raises(ValueError, match="nope is not an int"):
        dim("nope + 1", {"s8": 4})


def test_the_script_lists_the_table_and_refuses_unknown_names() -> None:
    script = [sys.executable, str(ROOT / "scripts" / "try_architectures.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    listed = subprocess.run([*script, "--list"], capture_output=True, text=True, check=True, cwd=ROOT, env=env).stdout
    assert [line.split()[0] for line in listed.splitlines()] == list(TRIALS)
    bad = subprocess.run([*script, "no-such-trial"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert bad.returncode == 2 and "unknown trial no-such-trial: pick names from --list" in bad.stderr
