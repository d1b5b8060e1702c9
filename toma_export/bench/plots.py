"""Matplotlib figures from benchmark rows: latency, speed-up vs ratio, peak memory, speed-fidelity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"none": "0.5", "toma": "C0", "tomesd": "C1", "todo": "C2", "catome": "C3", "ideal": "k"}


def _color(name: str, i: int) -> str:
    """Fixed colours for the methods; others (variants) take C4.. in order."""
    return COLORS.get(name) or f"C{4 + i % 6}"


def _label(r: dict[str, Any]) -> str:
    name = r.get("variant") or r["method"]
    return name if r["method"] == "none" else f"{name} {r['ratio']:g}"


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("median_ms") is not None:
            groups.setdefault((r["workload"], r["backend"]), []).append(r)
    return groups


def latency_plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Median latency bars with min-max whiskers, one bar per row."""
    fig, ax = plt.subplots(figsize=(max(5, 0.55 * len(rows) + 2), 4))
    med = [r["median_ms"] for r in rows]
    err = [[m - r["min_ms"] for m, r in zip(med, rows)], [r["max_ms"] - m for m, r in zip(med, rows)]]
    ax.bar(range(len(rows)), med, yerr=err, capsize=3, color=[COLORS.get(r["method"], "C4") for r in rows])
    ax.set_xticks(range(len(rows)), [_label(r) for r in rows], rotation=60, ha="right")
    ax.set_ylabel("latency, ms (median; whiskers min-max)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def speedup_plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Speed-up over the same run's baseline against ratio, one line per method (ideal dashed)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    extra = 0
    for method in dict.fromkeys(r.get("variant") or r["method"] for r in rows if r["method"] != "none"):
        pts = sorted((r["ratio"], r["speedup"]) for r in rows
                     if (r.get("variant") or r["method"]) == method and r.get("speedup"))
        if pts:
            ax.plot(*zip(*pts), marker="o", label=method, color=_color(method, extra),
                    linestyle="--" if method == "ideal" else "-")
            extra += method not in COLORS
    ax.axhline(1.0, color="0.6", linewidth=0.8)
    ax.set_xlabel("merge ratio (share of tokens removed)")
    ax.set_ylabel("speed-up vs unmerged (same run)")
    return _finish(fig, ax, title, path)


def memory_plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(max(5, 0.55 * len(rows) + 2), 4))
    ax.bar(range(len(rows)), [r.get("peak_mem_mb") or 0 for r in rows],
           color=[COLORS.get(r["method"], "C4") for r in rows])
    ax.set_xticks(range(len(rows)), [_label(r) for r in rows], rotation=60, ha="right")
    ax.set_ylabel(f"peak memory, MB ({rows[0].get('memory_method', '')})")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bench_plots(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Latency, speed-up and memory plots for every workload/backend of a bench result."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for (w, b), rows in _groups(result["results"]).items():
        stem = f"{w}_{b}"
        paths.append(latency_plot(rows, out / f"{stem}_latency.png", f"{w} / {b}"))
        paths.append(speedup_plot(rows, out / f"{stem}_speedup.png", f"{w} / {b}"))
        if any(r.get("peak_mem_mb") is not None for r in rows):
            paths.append(memory_plot(rows, out / f"{stem}_memory.png", f"{w} / {b}"))
    return paths


def frontier_plot(points: list[dict[str, Any]], path: str | Path, title: str = "speed vs fidelity") -> Path:
    """Relative error (lower is better) against speed-up, one line per method over its ratios.

    ``points``: dicts with ``method``, ``ratio``, ``speedup`` and ``rel_error``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    extra = 0
    for method in dict.fromkeys(p["method"] for p in points):
        pts = sorted((p["speedup"], p["rel_error"], p["ratio"]) for p in points if p["method"] == method)
        if not pts:
            continue
        xs, ys, rs = zip(*pts)
        ax.plot(xs, ys, marker="o", label=method, color=_color(method, extra))
        extra += method not in COLORS
        for x, y, r in pts:
            ax.annotate(f"{r:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("speed-up vs unmerged (bench JSON)")
    ax.set_ylabel("relative error vs unmerged output")
    return _finish(fig, ax, title, path)


def _finish(fig: Any, ax: Any, title: str, path: Path) -> Path:
    """Title, legend (when anything is labelled), save at 120 dpi, close: the end of every plot."""
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


BACKEND_COLORS = {"eager": "C0", "inductor": "C1", "inductor-pass": "C2", "onnxruntime": "C3", "tensorrt": "C4",
                  "onnxruntime-shared": "C6", "aotinductor": "C7", "inductor-max-autotune": "C8"}


def ceiling_plot(bars: list[dict[str, Any]], path: str | Path, columns: int = 3) -> Path:
    """Measured ToMA speed-up bars against the FLOP ceiling, one panel per workload and machine.

    ``bars``: dicts with ``panel`` (title: workload and machine), ``ratio``, ``backend``, ``tick`` (the
    bar's label), ``toma`` and ``ideal`` (measured speed-ups; ideal may be None), optional ``spread``
    ((min, max) over several runs: a whisker), ``ceiling`` and ``toma_flops`` (FLOP ratios; may be
    None). Bars of one ratio stand together; the ceiling is a red line across them (its value at the
    panel's top), the ToMA row's own FLOP ratio a dotted one, the ideal row a black diamond per bar.
    Log speed-up axis, so 0.5x and 2x sit equally far from 1x.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, NullFormatter

    path = Path(path)
    panels = list(dict.fromkeys(b["panel"] for b in bars))
    rows_n = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows_n, columns, figsize=(5.2 * columns, 3.6 * rows_n), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        mine = [b for b in bars if b["panel"] == panel]
        x, ticks, pos = 0.0, [], []
        values: list[float] = [1.0]
        for ratio in sorted({b["ratio"] for b in mine}):
            group = [b for b in mine if b["ratio"] == ratio]
            start = x
            for b in group:
                ax.bar(x, b["toma"], width=0.8, color=BACKEND_COLORS.get(b["backend"], "C5"))
                ax.annotate(f"{b['toma']:.2f}x", (x, b["toma"]), ha="center", va="top", fontsize=7, color="w",
                            fontweight="bold", xytext=(0, -2), textcoords="offset points")
                if b.get("spread"):
                    ax.vlines(x, *b["spread"], colors="0.25", linewidth=1)
                    values += list(b["spread"])
                if b.get("ideal"):
                    ax.plot(x, b["ideal"], marker="D", color="k", markersize=5, linestyle="none")
                pos.append(x)
                ticks.append(f"r={ratio:g}\n{b['tick']}")
                values += [v for v in (b["toma"], b.get("ideal")) if v]
                x += 1.0
            ceiling, toma_flops = group[0].get("ceiling"), group[0].get("toma_flops")
            span = (start - 0.45, x - 1 + 0.45)
            if ceiling:
                ax.hlines(ceiling, *span, colors="red", linewidth=2)
                ax.annotate(f"ceiling {ceiling:.2f}x", ((span[0] + span[1]) / 2, 0.97), xycoords=("data", "axes fraction"),
                            ha="center", va="top", fontsize=7, color="red")
                values.append(ceiling)
            if toma_flops:
                ax.hlines(toma_flops, *span, colors="red", linewidth=1.2, linestyles=":")
                values.append(toma_flops)
            x += 0.6
        width = x - 0.6
        pad = max(0.0, (3.0 - width) / 2)  # a lone bar keeps a bar's width, not the panel's
        ax.set_xlim(-0.9 - pad, width - 0.1 + pad)
        ax.axhline(1.0, color="0.6", linewidth=0.8)
        ax.set_yscale("log", base=2)
        ax.set_ylim(min(values) / 1.6, max(values) * 1.6)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(pos, ticks, fontsize=7 if len(pos) < 6 else 6)
        ax.set_title(panel, fontsize=9)
        ax.set_ylabel("speed-up vs unmerged", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    backends = list(dict.fromkeys(b["backend"] for b in bars))
    handles = [Patch(color=BACKEND_COLORS.get(b, "C5"), label=f"ToMA, {b}") for b in backends] + [
        Line2D([], [], marker="D", color="k", linestyle="none", label="ideal row (measured)"),
        Line2D([], [], color="red", linewidth=2, label="FLOP ceiling (unmerged / ideal FLOPs)"),
        Line2D([], [], color="red", linewidth=1.2, linestyle=":", label="ToMA row's FLOPs (unmerged / ToMA)"),
        Line2D([], [], color="0.25", linewidth=1, label="range over runs (median bar)"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / (3.6 * rows_n)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
