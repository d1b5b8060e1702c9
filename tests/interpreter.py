"""Running a Triton test module under the interpreter (tests only).

``TRITON_INTERPRET=1`` must be set before Triton is first imported; a module collected after some
other test imported Triton cannot switch, so it re-runs itself in a child process that sets it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: Set in the child, so its own copy of the re-run test skips.
CHILD_FLAG = "TOMA_TRITON_INTERPRETER_CHILD"


def in_child() -> bool:
    return os.environ.get(CHILD_FLAG) == "1"


def assert_passes_in_interpreter_child(test_file: str, select: str | None = None) -> None:
    """Run ``test_file``'s tests (those matching the ``-k`` expression ``select``, when given) in a
    child pytest with ``TRITON_INTERPRET=1``; fail with its output."""
    env = {**os.environ, "TRITON_INTERPRET": "1", CHILD_FLAG: "1"}
    root = Path(__file__).resolve().parents[1]
    only = ["-k", select] if select else []
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *only, str(Path(test_file))],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
