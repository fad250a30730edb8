"""The in-process lookup line of ``make bench-peers`` alone, in interleaved rounds: featurelake beside Feast.

Same data as benchmarks/peers/run.py (its ``generate``: seeded Parquet, 20 float64 features, 7-day ttl), one
``redis-server`` (featurelake on db 0, Feast on db 1). featurelake: apply, backfill, ``fl.sync()``; Feast (in
the peers venv, ``feast_side.py --sdk-only``): apply, materialize. Then ``--rounds`` rounds, alternating which
side goes first; in each, both sides run the lookups run.py times: ``fl.online.get_online_features(refs,
{"user_id": ids})`` here and ``store.get_online_features(features=refs, entity_rows=...).to_dict()`` there,
for 1 and for 100 random entities (the same seeded sequence), ``--requests`` timed calls each after 100.
Per round: p50/p99 of each side, the ratio Feast / featurelake, and the load average; at the end the best p99
of each side over the rounds and their ratio (target for 1 entity: >= 2x, issue #23).

    .venv/bin/python benchmarks/peers/sdk_lookup.py [--rows 1000000] [--users 50000] [--requests 2000]
                                                     [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import FEATURES, FEATURES_PY, PEERS_PY, VIEW, generate, load, pct, start_redis  # noqa: E402

import featurelake  # noqa: E402

TARGET_1 = 2.0  # issue #23: featurelake's in-process p99 at 1 entity >= 2x better than Feast's


def featurelake_round(fl: featurelake.Featurelake, users: int, args: argparse.Namespace) -> dict[str, Any]:
    """The same calls, entities and counts as run.py's featurelake ``sdk`` step."""
    refs = [f"{VIEW}:{f}" for f in FEATURES]
    out: dict[str, Any] = {}
    for width in (1, 100):
        rng = random.Random(args.seed + width)
        lat: list[float] = []
        la = load()
        for i in range(args.requests + 100):
            ids = [rng.randint(1, users) for _ in range(width)]
            t0 = time.perf_counter()
            fl.online.get_online_features(refs, {"user_id": ids})
            t1 = time.perf_counter()
            if i >= 100:
                lat.append(t1 - t0)
        out[str(width)] = {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "n": len(lat), "load": [la, load()]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--requests", type=int, default=2000, help="timed lookups per width, side and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None, help="write every round's figures here")
    args = ap.parse_args()
    if not PEERS_PY.exists():
        raise SystemExit(f"{PEERS_PY} missing: run benchmarks/peers/setup.sh (make bench-peers does)")

    work = Path(tempfile.mkdtemp(prefix="fl-sdk-lookup-"))
    meta = generate(work, args.rows, args.users, 1, args.seed)
    redis_proc, redis_port = start_redis(work)
    feast: subprocess.Popen[str] | None = None
    try:
        os.environ["FEATURELAKE_ONLINE_STORE__URL"] = f"redis://127.0.0.1:{redis_port}/0"
        proj = work / "fl_project"
        proj.mkdir()
        (proj / "featurelake.yaml").write_text("project: peers\nonline_store:\n  type: redis\n")
        (proj / "features.py").write_text(FEATURES_PY.replace("{data}", str(work / "data")))
        fl = featurelake.open(proj)
        fl.apply()
        start, end = datetime.fromisoformat(meta["start"]), datetime.fromisoformat(meta["end"])
        fl.backfill(VIEW, start.date().isoformat(), (end + timedelta(days=1)).date().isoformat())
        fl.sync()
        feast = subprocess.Popen(
            [str(PEERS_PY), str(HERE / "feast_side.py"), "--work", str(work), "--redis-port", str(redis_port),
             "--out", str(work / "feast.json"), "--requests", str(args.requests), "--seed", str(args.seed),
             "--sdk-only"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert feast.stdin is not None and feast.stdout is not None
        for line in feast.stdout:  # Feast prints its materialize progress on stdout first
            if line.strip() == "ready":
                break
        else:
            raise SystemExit("feast_side.py --sdk-only did not get ready (its errors are above)")

        def feast_round() -> dict[str, Any]:
            assert feast is not None and feast.stdin is not None and feast.stdout is not None
            feast.stdin.write("round\n")
            feast.stdin.flush()
            line = feast.stdout.readline()
            if not line:
                raise SystemExit("feast_side.py --sdk-only ended early (its errors are above)")
            answer: dict[str, Any] = json.loads(line)
            return answer

        rounds: list[dict[str, Any]] = []
        print(f"{meta['rows']:,} rows, {args.users:,} users, 20 features; {args.requests} lookups per width")
        print(
            f"{'round':>5} {'width':>5} {'Feast p50':>9} {'p99':>6} {'fl p50':>7} {'p99':>6} {'p99 ratio':>9}  load avg"
        )
        for r in range(args.rounds):
            if r % 2 == 0:
                ours, theirs = featurelake_round(fl, args.users, args), feast_round()
            else:
                theirs, ours = feast_round(), featurelake_round(fl, args.users, args)
            rounds.append({"featurelake": ours, "feast": theirs})
            for w in ("1", "100"):
                a, b = theirs[w], ours[w]
                loads = "/".join(f"{x:.1f}" for x in a["load"] + b["load"])
                print(
                    f"{r + 1:>5} {w:>5} {a['p50']:9.3f} {a['p99']:6.3f} {b['p50']:7.3f} {b['p99']:6.3f}"
                    f" {a['p99'] / b['p99']:8.2f}x  {loads}"
                )
        print("\nbest p99 over the rounds (ms):")
        for w in ("1", "100"):
            fe = min(x["feast"][w]["p99"] for x in rounds)
            ours_best = min(x["featurelake"][w]["p99"] for x in rounds)
            ratios = sorted(x["feast"][w]["p99"] / x["featurelake"][w]["p99"] for x in rounds)
            verdict = ""
            if w == "1":
                verdict = f"; target >= {TARGET_1:g}x: {'met' if fe / ours_best >= TARGET_1 else 'NOT met'}"
            print(
                f"  {w:>3} entit{'y' if w == '1' else 'ies'}: Feast {fe:.3f}, featurelake {ours_best:.3f}, ratio"
                f" {fe / ours_best:.2f}x (per round {ratios[0]:.2f}-{ratios[-1]:.2f}x){verdict}"
            )
        print(f"load average at the end {os.getloadavg()}")
        if args.json:
            args.json.write_text(
                json.dumps({"meta": meta, "args": vars(args), "rounds": rounds}, indent=1, default=str)
            )
        fl.close()
        return 0
    finally:
        if feast is not None:
            if feast.stdin is not None:
                feast.stdin.close()
            try:
                feast.wait(timeout=60)
            except subprocess.TimeoutExpired:
                feast.kill()
                feast.wait()
        redis_proc.kill()
        redis_proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
