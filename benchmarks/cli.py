"""Benchmark: how fast the ``featurelake`` command starts, beside ``python -c pass``.

Each command runs RUNS times as a fresh process (as a user types it); the table shows min and median wall
time, and the ratio of each to the bare interpreter's start (the floor no Python CLI can beat):

- ``featurelake --version`` and ``featurelake --help`` (targets: <= 0.3 s each);
- ``featurelake get VIEW KEY`` on the embedded default (SQLite online store), after ``apply``, a backfill and
  ``sync`` of a small project (target: <= 0.8 s);
- ``python -c pass`` and ``python -c "import click"`` as references.

    .venv/bin/python benchmarks/cli.py [--runs 10] [--json PATH]

Exits non-zero only on errors (a command that fails); a slow result still exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGETS_S = {"featurelake --version": 0.3, "featurelake --help": 0.3, "featurelake get VIEW KEY": 0.8}


def _time(cmd: list[str], cwd: Path, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        samples.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return samples


def _project(root: Path) -> Path:
    from tests.helpers import make_project

    proj = make_project(root / "proj")
    fl = [sys.executable, "-m", "featurelake"]
    for args in (
        ["apply"],
        ["backfill", "user_features", "--start", "2024-01-01", "--end", "2024-01-06"],
        ["sync"],
    ):
        subprocess.run([*fl, *args, "--json"], cwd=proj, check=True, capture_output=True)
    return proj


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    exe = str(Path(sys.executable).parent / "featurelake")
    with tempfile.TemporaryDirectory() as tmp:
        proj = _project(Path(tmp))
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import click'": [sys.executable, "-c", "import click"],
            "featurelake --version": [exe, "--version"],
            "featurelake --help": [exe, "--help"],
            "featurelake get VIEW KEY": [exe, "get", "user_features", "1"],
        }
        results = {name: _time(cmd, proj, args.runs) for name, cmd in cases.items()}
    floor = min(results["python -c pass"])
    print(f"CLI start-up, {args.runs} runs each (wall seconds); ratio = min / min of `python -c pass`")
    print(f"{'command':<28} {'min':>7} {'median':>7} {'ratio':>6} {'target':>7}  verdict")
    out = {}
    for name, samples in results.items():
        best, med = min(samples), statistics.median(samples)
        target = TARGETS_S.get(name)
        verdict = "" if target is None else ("met" if med <= target else "MISSED")
        print(
            f"{name:<28} {best:7.3f} {med:7.3f} {best / floor:6.1f} {'' if target is None else f'{target:.1f}':>7}  {verdict}"
        )
        out[name] = {"min": best, "median": med, "samples": samples, "target": target}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
