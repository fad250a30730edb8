"""Draw time and peak RSS against rows, featurelake beside Feast (matplotlib; runs in benchmarks/.peers-venv).

Inputs: featurelake's figures from ``benchmarks/scale.py --json`` and Feast's from
``benchmarks/peers/feast_scale.py --json``. Output: one PNG with two panels (wall time, peak RSS; both
against rows, log-log), featurelake's jobs as solid lines, Feast's as dashed lines in the colour of their
featurelake counterpart (sync / materialize, training set / historical retrieval). A Feast job that was
killed by the memory cap or timed out is drawn as a cross at what it had reached, with the reason beside it.

    benchmarks/.peers-venv/bin/python benchmarks/scale_chart.py --fl FL.json --feast FEAST.json --out PNG
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_data import featurelake_points, human

# (label, colour, line style, marker, featurelake job or None, Feast job or None)
SERIES = [
    ("featurelake backfill (WAP into Iceberg)", "#7f7f7f", "-", "o", "backfill", None),
    ("featurelake sync to SQLite", "#1f77b4", "-", "o", "sync", None),
    ("Feast materialize to SQLite", "#1f77b4", "--", "s", None, "materialize"),
    ("Feast materialize, pull_latest_features", "#1f77b4", "-.", "^", None, "materialize_latest"),
    ("featurelake training set", "#ff7f0e", "-", "o", "training", None),
    ("Feast get_historical_features", "#ff7f0e", "--", "s", None, "historical"),
    ("featurelake predict", "#2ca02c", "-", "o", "predict", None),
]


def log_ticks(low: float, high: float) -> list[float]:
    """1, 2, 5 x 10^k ticks covering ``low``..``high`` (a log axis' default leaves one or two labels)."""
    ticks: list[float] = []
    k = math.floor(math.log10(low))
    while 10**k <= high * 2:
        ticks.extend(m * 10**k for m in (1, 2, 5))
        k += 1
    inside = [t for t in ticks if low / 2 <= t <= high * 2]
    return inside or ticks


def draw(fl: dict[str, list[dict[str, Any]]], feast: dict[str, Any], out: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=90)
    sizes: set[int] = set()
    for ax, key, ylabel in ((axes[0], "seconds", "wall time (s)"), (axes[1], "peak_rss_mb", "peak RSS (MB)")):
        values: list[float] = []
        placed: dict[int, int] = {}  # labels already beside a size's crosses: stack the next one below them
        anchor: dict[int, float] = {}  # where a size's first label sits: the stack hangs from there
        for label, colour, style, marker, fl_job, fe_job in SERIES:
            pts = fl.get(fl_job, []) if fl_job else feast["feast"].get(fe_job, [])
            if not pts:
                continue
            ok = [p for p in pts if p.get("status", "finished") == "finished"]
            sizes.update(p["rows"] for p in pts)
            values.extend(p[key] for p in pts)
            ax.plot([p["rows"] for p in ok], [p[key] for p in ok], style, marker=marker, color=colour,
                    label=label, linewidth=1.6, markersize=5)  # fmt: skip
            for p in pts:
                if p.get("status", "finished") != "finished":
                    # What it had reached when stopped: a lower bound, joined by a dotted line.
                    if ok:
                        ax.plot(
                            [ok[-1]["rows"], p["rows"]],
                            [ok[-1][key], p[key]],
                            ":",
                            color=colour,
                            linewidth=1.2,
                        )
                    ax.plot(p["rows"], p[key], "x", color=colour, markersize=11, markeredgewidth=2.5)
                    n = placed[p["rows"]] = placed.get(p["rows"], -1) + 1
                    short = " ".join(label.split()[:2]).rstrip(",")  # "Feast materialize"
                    at = anchor.setdefault(
                        p["rows"], p[key]
                    )  # crosses close in value would overlap their labels
                    ax.annotate(f"{short} {p['status']}",
                                (p["rows"], at), textcoords="offset points", xytext=(-10, -6 - 11 * n), va="top",
                                ha="right", fontsize=8, color=colour)  # fmt: skip
        if key == "peak_rss_mb" and feast.get("cap_gb"):
            cap = feast["cap_gb"] * 1024
            ax.axhline(cap, color="#c0392b", linewidth=0.8, linestyle=":")
            ax.text(min(sizes), cap, f" memory cap for Feast's jobs ({feast['cap_gb']:g} GB)", va="bottom",
                    fontsize=7, color="#c0392b")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = log_ticks(min(values), max(values))
        ax.set_yticks(ticks)
        ax.set_yticklabels([f"{t:,g}" for t in ticks])
        ax.set_xticks(sorted(sizes))
        ax.set_xticklabels([human(s) for s in sorted(sizes)])
        ax.minorticks_off()
        ax.set_xlabel("feature rows (30 days, 12 columns, rows/60 entities)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", linewidth=0.4, alpha=0.6)
        ax.tick_params(labelsize=8)
    axes[0].set_title("wall time of a fresh process per job", fontsize=9)
    axes[1].set_title("peak RSS of that process (os.wait4)", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.11, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fl", type=Path, required=True, help="benchmarks/scale.py --json output")
    ap.add_argument("--feast", type=Path, required=True, help="benchmarks/peers/feast_scale.py --json output")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fl = featurelake_points(json.loads(args.fl.read_text()))
    feast = json.loads(args.feast.read_text())
    title = f"featurelake vs Feast {feast.get('feast_version', '')}: time and peak RSS against rows"
    draw(fl, feast, args.out, title)


if __name__ == "__main__":
    main()
