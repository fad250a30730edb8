"""The one load generator both HTTP servers are measured with (stdlib only, so either venv can run it).

Sequential ``POST /get-online-features`` over ONE keep-alive connection, Feast's request shape, with
``Content-Type: application/json`` (Feast answers 422 without it; featurelake accepts any). Random entities
from a seeded generator, so both servers get the same request sequence. Bounded by a request count and a
time limit per width. Prints JSON ``{"<width>": {"lat": [seconds...], "errors": n, "stalls": n}}``.

    python loadgen.py PORT USERS REQUESTS SECONDS SEED FEATURES_JSON
"""

from __future__ import annotations

import http.client
import json
import random
import sys
import time

WARMUP = 100


def main() -> None:
    port, users, requests, seconds, seed = (int(a) for a in sys.argv[1:6])
    features = json.loads(sys.argv[6])
    headers = {"Content-Type": "application/json"}
    out: dict[str, dict[str, object]] = {}
    for width in (1, 100):
        rng = random.Random(seed + width)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        lat: list[float] = []
        errors = 0
        deadline = time.monotonic() + seconds
        for i in range(requests + WARMUP):
            if time.monotonic() > deadline:
                break
            ids = [rng.randint(1, users) for _ in range(width)]
            body = json.dumps({"features": features, "entities": {"user_id": ids}})
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/get-online-features", body, headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                # A recycled server worker drops the connection: count it, reconnect, go on.
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            t1 = time.perf_counter()
            if resp.status != 200:
                raise SystemExit(f"HTTP {resp.status} from port {port}: {data[:300]!r}")
            if i >= WARMUP:
                lat.append(t1 - t0)
        conn.close()
        out[str(width)] = {
            "lat": lat,
            "errors": errors,
            "stalls": sum(1 for x in lat if x > 0.25),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
