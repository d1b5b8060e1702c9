"""Markdown tables and JSON files from benchmark rows."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

COLUMNS = ("workload", "backend", "method", "variant", "ratio", "median_ms", "min_ms", "max_ms", "speedup",
           "overhead_efficiency", "peak_mem_mb", "build_ms", "first_call_ms", "status")
HEADERS = {"median_ms": "median ms", "min_ms": "min ms", "max_ms": "max ms", "speedup": "speed-up",
           "overhead_efficiency": "overhead eff.", "peak_mem_mb": "peak MB",
           "build_ms": "build s", "first_call_ms": "first call s"}  # compile time beside run time


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "speedup":
        return f"{value:.2f}x"
    if key == "overhead_efficiency":
        return f"{100 * value:.0f}%"
    if key == "ratio":
        return f"{value:g}"
    if key in ("build_ms", "first_call_ms"):
        return f"{value / 1e3:.1f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    """One line per row; columns that are the same in every row are dropped from the table."""
    cols = [c for c in columns if c in ("method", "ratio", "median_ms", "speedup")
            or (c != "variant" and len({str(r.get(c)) for r in rows}) > 1)
            or (c == "variant" and any(r.get("variant", r["method"]) != r["method"] for r in rows))]
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(c, r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def markdown_report(result: dict[str, Any]) -> str:
    """Tables per workload and backend, with the run's machine and method notes."""
    meta, rows = result.get("meta", {}), result["results"]
    out = ["## Benchmark", ""]
    out.append(f"- machine: {meta.get('machine')} ({meta.get('processor')}), {meta.get('cpu_count')} CPUs, "
               f"torch {meta.get('torch')} with {meta.get('torch_threads')} threads, device {meta.get('device')}"
               + (f" ({meta['cuda']})" if meta.get("cuda") else "") + f", {meta.get('dtype')}; {meta.get('date')}")
    out.append(f"- timing: {meta.get('timing')}")
    out.append(f"- peak memory: {', '.join(meta.get('memory_methods', [])) or 'not measured'} "
               "(rss-peak-delta = peak resident set during one call minus the resident set before it)")
    for name, desc in meta.get("workloads", {}).items():
        out.append(f"- `{name}`: {desc}")
    notes = sorted({(r["workload"], r["note"]) for r in rows if r.get("note")})
    for w, note in notes:
        out.append(f"- ideal for `{w}`: {note}")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["backend"]), []).append(r)
    for (w, b), group in groups.items():
        out += ["", f"### {w} / {b}", "", markdown_table(group)]
    return "\n".join(out) + "\n"


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(result, indent=2) + "\n")


def load_json(path: str | Path) -> dict[str, Any]:
    """A bench JSON file as ``{"meta": ..., "results": [...]}`` (a bare list is accepted too)."""
    data = json.loads(Path(path).read_text())
    return data if isinstance(data, dict) else {"meta": {}, "results": data}
