"""Draw docs/img/bench-peers.png from benchmarks/peers/last-run.json (matplotlib; runs in the peers venv).

benchmarks/.peers-venv/bin/python benchmarks/peers/chart.py RESULTS.json OUT.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    with open(sys.argv[1]) as fh:
        results = json.load(fh)
    rows = [r for r in results["rows"] if not r["measure"].startswith("  ")]
    labels = [r["key"] for r in rows]
    ratios = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=80)
    colors = ["#2a7ab0" if x >= 1 else "#c0392b" for x in ratios]
    bars = ax.barh(labels[::-1], ratios[::-1], color=colors[::-1])
    ax.axvline(1.0, color="black", linewidth=0.8)
    for bar, x in zip(bars, ratios[::-1], strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {x:.2f}x", va="center", fontsize=8)
    ax.set_xlabel(
        "speed-up of featurelake over Feast (Feast time / featurelake time; > 1 = featurelake faster)"
    )
    m = results["meta"]
    ax.set_title(
        f"featurelake {results['featurelake']['featurelake_version']} vs Feast {results['feast']['feast_version']}"
        f" — {m['rows']:,} rows, {m['users']:,} users, 20 features, same Redis",
        fontsize=9,
    )
    ax.tick_params(axis="both", labelsize=8)
    ax.set_xlim(0, max(ratios) * 1.18)
    fig.tight_layout()
    fig.savefig(sys.argv[2])


if __name__ == "__main__":
    main()
