"""The Feast half of ``make bench-peers``; runs in the peers virtualenv (benchmarks/.peers-venv), never in ours.

Given the shared Parquet files and the shared redis-server, it writes a Feast feature repo (file offline store,
redis online store on db 1), applies it, and measures: in-process ``materialize`` of the whole range,
``get_online_features`` at 1 and 100 entities, ``feast serve`` through benchmarks/peers/loadgen.py and under
1, 8 and 32 concurrent keep-alive clients (benchmarks/peers/concurrency.py, wrk) with its defaults (one
worker) and again with ``--workers N`` (featurelake's worker count), and ``get_historical_features`` of the
entity rows (the result goes to a Parquet file for the value check).
Results: one JSON object on the path given by --out. Each figure carries the 1-minute load average.
With ``--sdk-only`` (benchmarks/peers/sdk_lookup.py) it applies and materializes, then runs only rounds of
the in-process lookups, one per line on stdin, each answered by a JSON line on stdout.

    benchmarks/.peers-venv/bin/python benchmarks/peers/feast_side.py --work DIR --redis-port P --out F [--sdk-only]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from concurrency import run_levels  # noqa: E402

REPO_PY = """
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
source = FileSource(path="{path}", timestamp_field="event_ts")
bench_features = FeatureView(
    name="bench_features",
    entities=[user],
    ttl=timedelta(days={ttl_days}),
    schema=[Field(name="user_id", dtype=Int64)] + [Field(name=f, dtype=Float64) for f in {features!r}],
    source=source,
    online=True,
)
"""

STORE_YAML = """project: peers
registry: {registry}
provider: local
online_store:
  type: redis
  connection_string: "127.0.0.1:{port},db=1"
offline_store:
  type: file
entity_key_serialization_version: 3
"""


def load() -> float:
    return round(os.getloadavg()[0], 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_repo(repo: Path, parquet: Path, redis_port: int, features: list[str], ttl_days: int) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        STORE_YAML.format(registry=repo / "registry.db", port=redis_port)
    )
    (repo / "features.py").write_text(REPO_PY.format(path=parquet, ttl_days=ttl_days, features=features))


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


@contextlib.contextmanager
def feast_server(repo: Path, *extra: str) -> Iterator[int]:
    """``feast serve`` (its defaults plus ``--no-access-log`` and ``extra``) on a free port, until the block ends."""
    port = free_port()
    feast_bin = str(Path(sys.executable).parent / "feast")
    server = subprocess.Popen(
        [feast_bin, "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port), "--no-access-log", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    err = server.stderr.read().decode() if server.stderr else ""
                    raise SystemExit(f"feast serve did not start: {err[-2000:]}") from None
                time.sleep(0.2)
        yield port
    finally:
        # feast serve runs gunicorn workers: end its whole process group (we started it in its own session).
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def sdk_lookups(
    store: Any, refs: list[str], features: list[str], users: int, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """``get_online_features`` of 1 and of 100 random entities, ``args.requests`` times each (after 100)."""
    out: dict[str, dict[str, Any]] = {}
    for width in (1, 100):
        rng = random.Random(args.seed + width)
        lat: list[float] = []
        la = load()
        present = 0
        for i in range(args.requests + 100):
            ids = [rng.randint(1, users) for _ in range(width)]
            t0 = time.perf_counter()
            res = store.get_online_features(
                features=refs, entity_rows=[{"user_id": u} for u in ids]
            ).to_dict()
            t1 = time.perf_counter()
            if i >= 100:
                lat.append(t1 - t0)
            if i == 100:
                present = sum(v is not None for v in res[features[0]])
        out[str(width)] = {
            "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "n": len(lat), "load": [la, load()],
            "non_null_first": present,
        }  # fmt: skip
        print(f"feast sdk {width}: p50 {pct(lat, 0.5):.2f} p99 {pct(lat, 0.99):.2f} ms", file=sys.stderr)
    return out


def sdk_rounds(
    store: Any, refs: list[str], features: list[str], users: int, args: argparse.Namespace
) -> None:
    """``--sdk-only`` (benchmarks/peers/sdk_lookup.py): "ready" on stdout, then one round of
    :func:`sdk_lookups` per line read on stdin, each answered by one JSON line, so the caller can interleave
    these rounds with its own."""
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps(sdk_lookups(store, refs, features, users, args)), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=90)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--concurrency-seconds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2, help="the second concurrency run's --workers")
    ap.add_argument(
        "--sdk-only",
        action="store_true",
        help="apply and materialize, then only in-process lookup rounds driven over stdin/stdout",
    )
    args = ap.parse_args()

    meta = json.loads((args.work / "meta.json").read_text())
    features: list[str] = meta["features"]
    users: int = meta["users"]
    import feast
    from feast import FeatureStore

    repo = args.work / "feast_repo"
    write_repo(repo, args.work / "data" / "features.parquet", args.redis_port, features, meta["ttl_days"])
    spec = importlib.util.spec_from_file_location("peers_feast_repo", repo / "features.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    store = FeatureStore(repo_path=str(repo))
    store.apply([mod.user, mod.bench_features])
    out: dict[str, Any] = {"feast_version": feast.__version__}
    refs = [f"bench_features:{f}" for f in features]

    # (1) materialization of the whole range into Redis, in-process.
    start = pd.Timestamp(meta["start"]) - timedelta(days=1)
    end = pd.Timestamp(meta["end"]) + timedelta(days=1)
    la = load()
    t0 = time.perf_counter()
    store.materialize(start_date=start.to_pydatetime(), end_date=end.to_pydatetime())
    secs = time.perf_counter() - t0
    out["materialize"] = {"seconds": secs, "rows": meta["rows"], "load": [la, load()]}
    print(f"feast materialize: {secs:.2f}s", file=sys.stderr)

    # (2a) in-process lookups, same seeded entity sequence as featurelake's side.
    if args.sdk_only:
        sdk_rounds(store, refs, features, users, args)
        return
    out["sdk"] = sdk_lookups(store, refs, features, users, args)

    # (2b) feast serve through the shared load generator, then under concurrent clients (wrk).
    with feast_server(repo) as port:
        la = load()
        gen = subprocess.run(
            [sys.executable, str(HERE / "loadgen.py"), str(port), str(users), str(args.requests),
             str(args.seconds), str(args.seed), json.dumps(refs)],
            capture_output=True, text=True, timeout=args.seconds * 3 + 60,
        )  # fmt: skip
        if gen.returncode != 0:
            raise SystemExit(f"load generator against feast serve failed: {gen.stderr}{gen.stdout}")
        http = json.loads(gen.stdout)
        out["http"] = {
            w: {"p50": pct(d["lat"], 0.5), "p99": pct(d["lat"], 0.99), "n": len(d["lat"]),
                "errors": d["errors"], "stalls": d["stalls"], "load": [la, load()]}
            for w, d in http.items()
        }  # fmt: skip
        print(f"feast serve: {out['http']}", file=sys.stderr)
        out["concurrency"] = run_levels(port, users, refs, seconds=args.concurrency_seconds, seed=args.seed)
        print(f"feast serve, concurrent clients: {out['concurrency']}", file=sys.stderr)
    with feast_server(repo, "--workers", str(args.workers)) as port:
        out["concurrency_workers"] = run_levels(
            port, users, refs, seconds=args.concurrency_seconds, seed=args.seed
        )
        out["workers"] = args.workers
        print(f"feast serve --workers {args.workers}, concurrent clients: {out['concurrency_workers']}",
              file=sys.stderr)  # fmt: skip

    # (3) point-in-time training set (historical retrieval on the file offline store).
    ents = pq.read_table(args.work / "data" / "entities.parquet").to_pandas()
    la = load()
    t0 = time.perf_counter()
    df = store.get_historical_features(entity_df=ents, features=refs).to_df()
    secs = time.perf_counter() - t0
    df.to_parquet(args.work / "feast_training_set.parquet")
    out["training_set"] = {
        "seconds": secs, "entity_rows": len(ents), "rows_out": len(df), "load": [la, load()],
    }  # fmt: skip
    print(f"feast historical: {secs:.2f}s, {len(df)} of {len(ents)} rows", file=sys.stderr)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
