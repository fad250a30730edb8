"""Bounded loopback load run of ``featurelake serve`` (``make reliability``; not part of CI's pytest run).

Builds a project with USERS entities synced to the online store (Redis when ``redis-server`` is installed,
else SQLite), starts ``featurelake serve`` as its own process on a free loopback port, and drives
``POST /get-online-features`` (ENTITIES random users, all three features) with an **open-loop** load
generator: THREADS Python threads, each with its own keep-alive HTTP/1.1 connection, sending on a fixed
schedule. Latency is measured from the *scheduled* send time, so a server that falls behind shows its
queueing delay instead of silently lowering the rate (no coordinated omission).

The rate grows by --factor (1.5) each step (STEP seconds each, at most --budget seconds in all) and the run stops at
saturation: achieved throughput under 90 % of the target, or p99 over --p99-limit ms, or any error. Per step
it records achieved req/s, p50/p99/max and errors, and the server's RSS (``/proc/<pid>/status``) before the
first measured step (after a warm-up) and after the last. Exits 1 when a step below saturation had errors
or the RSS grew by more than --rss-limit MB.

    .venv/bin/python -m tests.reliability.load_run [--budget 60] [--start-rate 200] [--factor 1.5] [--json PATH]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import featurelake
from tests.online_helpers import append, project
from tests.redis_server import RedisServer, free_port
from tests.reliability.common import REPO, env

USERS = 10_000
ENTITIES = 10
THREADS = 8
FEATURES = ["user_features:amount_avg_1d", "user_features:txn_count_1d", "user_features:amount_sum_1d"]


@dataclass
class Step:
    target_rps: int
    seconds: float
    sent: int
    ok: int
    errors: int
    achieved_rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    saturated: bool


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def body(rng: random.Random) -> bytes:
    users = [rng.randint(1, USERS) for _ in range(ENTITIES)]
    return json.dumps({"features": FEATURES, "entities": {"user_id": users}}).encode()


def run_step(port: int, rate: int, seconds: float, p99_limit: float) -> Step:
    """Send ``rate`` req/s for ``seconds`` from THREADS keep-alive connections, open loop."""
    latencies: list[list[float]] = [[] for _ in range(THREADS)]
    errors = [0] * THREADS
    start = time.perf_counter() + 0.05
    end = start + seconds
    interval = THREADS / rate  # each thread's share of the schedule

    def worker(i: int) -> None:
        rng = random.Random(i * 7919 + rate)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        due = start + i * interval / THREADS
        while due < end:
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            try:
                conn.request("POST", "/get-online-features", body=body(rng))
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors[i] += 1
                else:
                    latencies[i].append(time.perf_counter() - due)
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            due += interval
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = sorted(x for part in latencies for x in part)
    ok, errs = len(lat), sum(errors)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) >= 2 else [0.0] * 99
    achieved = ok / elapsed
    p99 = q[98] * 1000
    saturated = achieved < 0.9 * rate or p99 > p99_limit or errs > 0
    return Step(
        rate,
        round(elapsed, 2),
        ok + errs,
        ok,
        errs,
        achieved,
        q[49] * 1000,
        p99,
        lat[-1] * 1000 if lat else 0.0,
        saturated,
    )


def build(root: Path, redis_url: str | None) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    fl = project(root, "redis" if redis_url else "sqlite", redis_url)
    try:
        append(fl, [(u, now - timedelta(minutes=u % 600), float(u % 97)) for u in range(1, USERS + 1)])
        fl.sync()
    finally:
        fl.close()
    with featurelake.open(root) as h:
        assert h.online.store.count("user_features") == USERS


def wait_healthy(proc: subprocess.Popen[bytes], port: int) -> None:
    for _ in range(400):
        if proc.poll() is not None:
            raise SystemExit(f"featurelake serve exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("featurelake serve did not become healthy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds of load in all (default 60)")
    ap.add_argument("--step", type=float, default=8.0, help="seconds per rate step (default 8)")
    ap.add_argument("--start-rate", type=int, default=200, help="req/s of the first step (default 200)")
    ap.add_argument("--factor", type=float, default=1.5, help="rate multiplier per step (default 1.5)")
    ap.add_argument("--p99-limit", type=float, default=100.0, help="p99 ms that counts as saturated")
    ap.add_argument("--rss-limit", type=float, default=50.0, help="MB of RSS growth that fails the run")
    ap.add_argument("--store", choices=["redis", "sqlite"], default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    store = args.store or ("redis" if shutil.which("redis-server") else "sqlite")

    tmp = Path(tempfile.mkdtemp(prefix="fl-load-"))
    redis_srv = RedisServer(tmp / "redis").start() if store == "redis" else None
    proc: subprocess.Popen[bytes] | None = None
    try:
        build(tmp / "proj", redis_srv.url if redis_srv else None)
        port = free_port()
        log = (tmp / "server.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "featurelake", "-C", str(tmp / "proj"), "serve", "--port", str(port),
             "--log-level", "warning"],
            env=env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_healthy(proc, port)
        run_step(port, 50, 2.0, args.p99_limit)  # warm-up: imports, connection pools, plan caches
        rss_before = rss_kb(proc.pid)
        steps: list[Step] = []
        rate, spent = args.start_rate, 0.0
        while spent + args.step <= args.budget:
            s = run_step(port, rate, args.step, args.p99_limit)
            steps.append(s)
            spent += s.seconds
            print(
                f"  {s.target_rps:>6} req/s target: {s.achieved_rps:8.1f} achieved, p50 {s.p50_ms:6.2f} ms, "
                f"p99 {s.p99_ms:7.2f} ms, errors {s.errors}{'  <- saturated' if s.saturated else ''}",
                file=sys.stderr,
            )
            if s.saturated:
                break
            rate = int(rate * args.factor)
        rss_after = rss_kb(proc.pid)
        alive = proc.poll() is None
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if redis_srv is not None:
            redis_srv.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nfeaturelake serve under load: {store} store, {USERS} users, {ENTITIES} entities x "
          f"{len(FEATURES)} features per request, {THREADS} keep-alive connections, open loop")  # fmt: skip
    print("| target req/s | achieved req/s | p50 ms | p99 ms | max ms | errors | saturated |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for s in steps:
        print(
            f"| {s.target_rps} | {s.achieved_rps:.0f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | {s.max_ms:.1f} | "
            f"{s.errors} | {'yes' if s.saturated else 'no'} |"
        )
    growth_mb = (rss_after - rss_before) / 1024
    print(f"\nserver RSS: {rss_before / 1024:.1f} MB after warm-up, {rss_after / 1024:.1f} MB after "
          f"{sum(s.sent for s in steps)} requests ({growth_mb:+.1f} MB); server alive: {alive}")  # fmt: skip
    best = max((s for s in steps if not s.saturated), key=lambda s: s.achieved_rps, default=None)
    if best:
        print(f"highest unsaturated step: {best.achieved_rps:.0f} req/s at p99 {best.p99_ms:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps({
            "store": store, "steps": [asdict(s) for s in steps],
            "rss_before_kb": rss_before, "rss_after_kb": rss_after,
        }, indent=2))  # fmt: skip
    bad_steps = [s for s in steps[:-1] if s.errors]  # errors before the saturating step
    failed = bool(bad_steps) or growth_mb > args.rss_limit or not alive
    if failed:
        print("FAILED: errors below saturation, memory growth over the limit, or the server died")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
