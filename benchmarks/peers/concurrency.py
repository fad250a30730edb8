"""Concurrent keep-alive load on ``POST /get-online-features`` with wrk, the one generator both servers get.

stdlib only, so featurelake's .venv and the Feast peers venv both run it. ``wrk`` (Debian package ``wrk``)
runs outside the server process with ``-c N`` keep-alive connections, each sending its next request as soon
as the previous answer arrived (closed loop); benchmarks/peers/lookup.lua builds Feast's request body with
WIDTH random user ids (seeded per wrk thread) and ``Content-Type: application/json``. Each level starts
with a short warm-up run that is not recorded. Per level: requests/s, p50/p90/p99/max latency, errors
(connect, read, write, timeout and non-2xx answers) and the 1-minute load average before and after.

    python concurrency.py PORT USERS FEATURES_CSV [--width 1] [--seconds 10] [--levels 1,8,32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LUA = HERE / "lookup.lua"
LEVELS = (1, 8, 32)


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit(
            "wrk is not installed: apt-get install -y wrk (benchmarks/need-wrk.sh does it as root)"
        )
    return found


def _wrk(port: int, connections: int, seconds: float, args: list[str]) -> dict[str, Any]:
    threads = 1 if connections == 1 else 2
    cmd = [wrk_binary(), "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s",
           "-s", str(LUA), f"http://127.0.0.1:{port}", "--", *args]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise SystemExit(f"wrk failed ({out.returncode}): {out.stderr}{out.stdout}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    return dict(json.loads(line))


def run_levels(
    port: int,
    users: int,
    features: list[str],
    *,
    width: int = 1,
    seconds: float = 10.0,
    warmup: float = 2.0,
    seed: int = 7,
    levels: tuple[int, ...] = LEVELS,
    token: str = "",
) -> dict[str, dict[str, Any]]:
    """``{"<connections>": {"rps", "p50", "p90", "p99", "max" (ms), "requests", "errors", "load"}}``."""
    args = [str(users), str(width), str(seed), ",".join(features), token]
    out: dict[str, dict[str, Any]] = {}
    for c in levels:
        if warmup > 0:
            _wrk(port, c, warmup, args)
        before = round(os.getloadavg()[0], 2)
        r = _wrk(port, c, seconds, args)
        errors = sum(
            r[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
        )
        out[str(c)] = {
            "rps": r["requests"] / (r["duration_us"] / 1e6),
            "p50": r["p50_us"] / 1000, "p90": r["p90_us"] / 1000, "p99": r["p99_us"] / 1000,
            "max": r["max_us"] / 1000, "requests": r["requests"], "errors": errors,
            "load": [before, round(os.getloadavg()[0], 2)],
        }  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("port", type=int)
    ap.add_argument("users", type=int)
    ap.add_argument("features", help="comma-separated view:feature references")
    ap.add_argument("--width", type=int, default=1, help="entities per request")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    levels = tuple(int(x) for x in a.levels.split(","))
    res = run_levels(a.port, a.users, a.features.split(","), width=a.width, seconds=a.seconds, seed=a.seed,
                     levels=levels)  # fmt: skip
    print(json.dumps(res))


if __name__ == "__main__":
    main()
