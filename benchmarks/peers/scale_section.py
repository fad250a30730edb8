"""The scale section of ``make bench-peers``: featurelake's benchmarks/scale.py beside Feast's feast_scale.py.

Runs in featurelake's .venv (stdlib only, called by run.py). featurelake's side is ``benchmarks/scale.py
--json`` (backfill, sync to SQLite, training set, predict; or the JSON of an earlier run given with
``--scale-fl-json``, with its printed output in ``--scale-fl-log`` for the load averages), Feast's side is
benchmarks/peers/feast_scale.py in the peers virtualenv (materialize to SQLite, get_historical_features) on the
same generated data (benchmarks/scale_data.py), each job a fresh process, peak RSS from outside. The merged
result goes to benchmarks/peers/last-scale.json; the chart (benchmarks/scale_chart.py) and the section of
docs/benchmarks.md (report.py) are drawn from it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

from scale_data import featurelake_points, parse_size  # noqa: E402

# benchmarks/scale.py prints one line per job: "  3M backfill: 5.0s, peak RSS 442 MB (3000000 rows; load 1.23)"
JOB_LINE = re.compile(r"^\s+(\S+) (\w+): [\d.]+s, peak RSS \d+ MB \(.*load ([\d.]+)\)")


def job_loads(log: str) -> dict[str, float]:
    """``{"<rows> <job>": 1-minute load average when the job ended}`` from scale.py's printed lines."""
    out: dict[str, float] = {}
    for line in log.splitlines():
        m = JOB_LINE.match(line)
        if m:
            out[f"{parse_size(m.group(1))} {m.group(2)}"] = float(m.group(3))
    return out


def _loads() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_featurelake(sizes: str, out: Path) -> tuple[dict[str, Any], str, list[float]]:
    """benchmarks/scale.py at ``sizes`` (its output echoed to stderr as it comes); its JSON and printed text."""
    start = _loads()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--sizes", sizes, "--json", str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    text = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        text.append(line)
    if proc.wait() != 0:
        raise SystemExit(f"benchmarks/scale.py failed (exit {proc.returncode})")
    return json.loads(out.read_text()), "".join(text), [start[0], _loads()[0]]


def run(
    *, sizes: str, work: Path, peers_py: Path, cap_gb: float, timeout: float,
    fl_json: Path | None = None, fl_log: Path | None = None, machine: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Both sides at ``sizes``; the merged result (also written to benchmarks/peers/last-scale.json)."""
    work.mkdir(parents=True, exist_ok=True)
    if fl_json is None:
        fl_raw, log, fl_load = run_featurelake(sizes, work / "scale-fl.json")
    else:
        fl_raw, log, fl_load = json.loads(fl_json.read_text()), fl_log.read_text() if fl_log else "", []
    feast_json = work / "scale-feast.json"
    subprocess.run(
        [str(peers_py), str(HERE / "feast_scale.py"), "--sizes", sizes, "--cap-gb", str(cap_gb),
         "--timeout", str(timeout), "--json", str(feast_json)],
        check=True,
    )  # fmt: skip
    fl = featurelake_points(fl_raw)
    loads = job_loads(log)
    for job, pts in fl.items():
        for p in pts:
            if f"{p['rows']} {job}" in loads:
                p["load"] = loads[f"{p['rows']} {job}"]
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine or {},
        "featurelake": fl, "featurelake_load": fl_load,
        "featurelake_source": f"an earlier `benchmarks/scale.py --json` run ({fl_json.name})"
        if fl_json
        else "`benchmarks/scale.py` in this run",
        "feast": json.loads(feast_json.read_text()),
    }  # fmt: skip
    (HERE / "last-scale.json").write_text(json.dumps(result, indent=1))
    return result


def chart(peers_py: Path, out: Path) -> None:
    """docs/img/scale-vs-feast.png from last-scale.json (matplotlib lives in the peers virtualenv)."""
    scale = json.loads((HERE / "last-scale.json").read_text())
    with tempfile.TemporaryDirectory(prefix="fl-scale-chart-") as tmp:
        fl_path, fe_path = Path(tmp) / "featurelake.json", Path(tmp) / "feast.json"
        fl_path.write_text(json.dumps({"featurelake": scale["featurelake"]}))
        fe_path.write_text(json.dumps(scale["feast"]))
        subprocess.run(
            [str(peers_py), str(ROOT / "benchmarks" / "scale_chart.py"), "--fl", str(fl_path),
             "--feast", str(fe_path), "--out", str(out)],
            check=True,
        )  # fmt: skip
