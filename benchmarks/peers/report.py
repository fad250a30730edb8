"""Write docs/benchmarks.md from one ``make bench-peers`` run (the dict run.py saves as last-run.json)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scale_data import entities_for

OWN_BENCHES = [
    ("backfill.py", "Write-Audit-Publish backfill (branch, audit, publish)",
     "a plain PyIceberg `table.append` of the same rows (target WAP / append <= 1.5)"),
    ("audit.py", "the audit of a backfill branch (checks and statistics)",
     "DuckDB `SELECT count(*), count(c1), ...` over the same frame"),
    ("online.py", "`fl.sync()` into Redis; `featurelake serve` and in-process lookups, 1 and 100 entities; "
     "requests/s and p50/p99 under 1, 8 and 32 concurrent keep-alive clients (wrk)",
     "raw redis-py pipelined `HSET` of the latest rows / raw `HGETALL` (pipelined for 100 keys); "
     "`featurelake serve --workers 1` for the concurrency run"),
    ("maintenance.py", "compaction of many small files, expiry",
     "the same full scan before compaction (speed-up = before / after)"),
    ("monitoring.py", "metric hooks on jobs and on the server hot path",
     "the same job undecorated; `prometheus_client` `Histogram.observe`"),
    ("training_set.py", "point-in-time join (`point_in_time_join`, and `build_training_set` from Iceberg)",
     "DuckDB `ASOF LEFT JOIN` with the ttl over the same Arrow tables (target <= 1.5)"),
    ("predict.py", "batch prediction through the pickle / ONNX / TorchScript flavors",
     "the raw model called once on the whole matrix (target <= 1.3)"),
    ("engines.py", "local (DuckDB + PyIceberg) engine vs Spark engine on the same backfill",
     "ratio spark / local; crossover estimate in docs/scaling.md"),
]  # fmt: skip


def _fmt(x: float, unit: str) -> str:
    return f"{x:,.0f}" if unit == "rows/s" else f"{x:,.2f}"


def _concurrency(add: Any, fl: dict[str, Any], fe: dict[str, Any]) -> None:
    n = fl["workers"]
    add("")
    add("### Concurrent clients (one entity per request)\n")
    add(f"`wrk` (outside both servers, `benchmarks/peers/concurrency.py` with `lookup.lua`: Feast's request shape, "
        "a random user per request, `Content-Type: application/json`) keeps N keep-alive connections busy, each "
        "sending its next request when the previous answer arrived; 2 s of warm-up, then the timed run. "
        f"`featurelake serve` runs its default {n} workers (one per core); Feast is measured with its defaults "
        f"(`feast serve`: one gunicorn worker, recycled every ~1,000 requests) and with `--workers {n}`. Target: "
        "featurelake >= 2x Feast's requests/s at every level, p99 <= 25 ms at 32 clients. Client, servers and Redis "
        "share the machine's cores.\n")  # fmt: skip
    add(f"| clients | featurelake req/s | p50 ms | p99 ms | Feast req/s | p50 ms | p99 ms | ratio | "
        f"Feast --workers {n} req/s | p50 ms | p99 ms | ratio | load avg (fl / Feast / Feast x{n}) |")  # fmt: skip
    add("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for c, d in fl["concurrency"].items():
        f, g = fe["concurrency"][c], fe["concurrency_workers"][c]
        add(f"| {c} | {d['rps']:,.0f} | {d['p50']:.2f} | {d['p99']:.2f} | {f['rps']:,.0f} | {f['p50']:.2f} | "
            f"{f['p99']:.2f} | **{d['rps'] / f['rps']:.2f}x** | {g['rps']:,.0f} | {g['p50']:.2f} | {g['p99']:.2f} | "
            f"{d['rps'] / g['rps']:.2f}x | {d['load'][0]:.1f}-{d['load'][1]:.1f} / {f['load'][0]:.1f}-{f['load'][1]:.1f}"
            f" / {g['load'][0]:.1f}-{g['load'][1]:.1f} |")  # fmt: skip
    errors = {name: sum(x["errors"] for x in side.values())
              for name, side in (("featurelake", fl["concurrency"]), ("Feast", fe["concurrency"]),
                                 (f"Feast --workers {n}", fe["concurrency_workers"]))}  # fmt: skip
    add("")
    add("Errors (connect, read, write, timeouts, non-2xx) over all levels: "
        + ", ".join(f"{k} {v}" for k, v in errors.items()) + ".")  # fmt: skip
    levels = fl["concurrency"]
    low = min(levels, key=lambda c: levels[c]["rps"] / fe["concurrency"][c]["rps"])
    low_n = min(levels, key=lambda c: levels[c]["rps"] / fe["concurrency_workers"][c]["rps"])
    ratio = levels[low]["rps"] / fe["concurrency"][low]["rps"]
    ratio_n = levels[low_n]["rps"] / fe["concurrency_workers"][low_n]["rps"]
    p99 = levels["32"]["p99"] if "32" in levels else float("nan")
    add(f"\n**Targets in this run**: requests/s >= 2x Feast's at every level: **{'met' if ratio >= 2 else 'not met'}** "
        f"(lowest {ratio:.2f}x, at {low} client{'s' if low != '1' else ''}; against Feast with {n} workers, lowest "
        f"{ratio_n:.2f}x). p99 at 32 clients <= 25 ms: **{'met' if p99 <= 25 else 'not met'}** ({p99:.2f} ms, "
        f"load average {levels['32']['load'][0]:.1f}-{levels['32']['load'][1]:.1f} on {n} cores"
        f"{'' if p99 <= 25 else '; 4 busy processes (wrk, 2 workers, Redis) and other jobs shared them'}).\n")  # fmt: skip


def write_page(r: dict[str, Any], path: Path, scale: dict[str, Any] | None = None) -> None:
    m, meta, fl, fe, chk = r["machine"], r["meta"], r["featurelake"], r["feast"], r["check"]
    args = r["args"]
    out: list[str] = []
    add = out.append
    add("# Benchmarks: featurelake beside Feast, and our own `make bench`\n")
    add("Generated by `make bench-peers` (benchmarks/peers/run.py); edit the generator, not this page.\n")
    add("![featurelake vs Feast, speed-up per measure](img/bench-peers.png)\n")
    add("## Reproduce\n")
    add("```console\n$ make bench-peers            # 1M rows; creates benchmarks/.peers-venv with feast[redis]==0.67.0\n"
        "$ .venv/bin/python benchmarks/peers/run.py --rows 100000 --requests 500 --no-docs   # a quick run\n```\n")  # fmt: skip
    add("Both systems run in the same run, on the same generated Parquet (seeded), against the same "
        "`redis-server` on a free loopback port (featurelake on db 0, Feast on db 1). Feast runs in its own "
        "virtualenv (`benchmarks/.peers-venv`), featurelake in `.venv`; the HTTP servers are measured with the "
        "same load generator (`benchmarks/peers/loadgen.py`: one keep-alive connection, sequential requests, "
        "`Content-Type: application/json`, 100 warm-up requests, bounded by count and time).\n")  # fmt: skip
    add("## Machine\n")
    add(
        f"- {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB memory, Linux {m['kernel']}; run {m['date']}"
    )
    add(f"- featurelake {fl['featurelake_version']}, Feast {fe['feast_version']} (`feast[redis]`), "
        f"redis-server {m['redis']}, Python {m['python']}")  # fmt: skip
    peak = max(x for row in r["rows"] for x in row["load"])
    busy = peak > 1.5 * m["nproc"]  # the run's own servers, client and Redis keep a load near the cores
    add(("- **The machine was shared with other work during the run**" if busy else
         f"- **A quiet run**: the 1-minute load average stayed at or under {peak:.1f} on {m['nproc']} cores, the "
         "benchmark's own processes (servers, load generator, Redis) included")
        + " (load average in the last column: 1-minute load at the start and end of each side's measurement, "
        "Feast first). Absolute numbers vary 10-40% between runs; the two sides ran minutes apart in the same "
        f"run. Load average at the end: {', '.join(f'{x:.2f}' for x in r['load_end'])}.\n")  # fmt: skip
    add("## Data\n")
    add(f"{meta['rows']:,} feature rows, {meta['users']:,} users ({meta['distinct_users']:,} with rows), 20 float64 "
        f"features, {meta['ttl_days']}-day ttl, event times over 30 days ending at the run's UTC midnight (so "
        f"online values are within the ttl); {meta['entities']:,} entity rows for the training set (user ids up to "
        "1.1x the users, so ~10% have no features; times from a day before the first feature row to a day "
        f"after the last). Seed {meta['seed']}. `{args['requests']}` timed lookups per width and system.\n")  # fmt: skip
    add("## Results\n")
    add("Ratio: Feast / featurelake for times, featurelake / Feast for rows/s, so **above 1 featurelake is "
        "faster**.\n")  # fmt: skip
    add("| measure | Feast | featurelake | unit | ratio | load avg (Feast / featurelake) |")
    add("|---|---:|---:|---|---:|---|")
    for row in r["rows"]:
        ld = row["load"]
        add(f"| {row['measure'].strip()} | {_fmt(row['feast'], row['unit'])} | {_fmt(row['featurelake'], row['unit'])} "
            f"| {row['unit']} | {row['ratio']:.2f}x | {ld[0]:.1f}-{ld[1]:.1f} / {ld[2]:.1f}-{ld[3]:.1f} |")  # fmt: skip
    add("")
    add(f"- Materialization: Feast `store.materialize(start, end)` in-process took {fe['materialize']['seconds']:.2f} s; "
        f"featurelake `fl.sync()` {fl['sync']['seconds']:.2f} s ({fl['sync']['keys']:,} keys). featurelake first "
        f"runs a Write-Audit-Publish backfill of the Parquet into Iceberg ({fl['backfill']['seconds']:.2f} s), "
        "work Feast does not do at all (it reads the Parquet directly); the second line counts it.")  # fmt: skip
    for w in ("1", "100"):
        add(f"- HTTP, {w} entit{'y' if w == '1' else 'ies'}: Feast {fe['http'][w]['n']} requests, "
            f"{fe['http'][w]['errors']} dropped connections, {fe['http'][w]['stalls']} over 250 ms; featurelake "
            f"{fl['http'][w]['n']} requests, {fl['http'][w]['errors']} dropped, {fl['http'][w]['stalls']} over 250 ms. "
            "`feast serve` ran with its defaults plus `--no-access-log` (one gunicorn worker, recycled every "
            f"~1,000 requests); `featurelake serve` with `--log-level warning` (its default {fl.get('workers', 1)} "
            "workers, one per core).")  # fmt: skip
    ts_fl, ts_fe = fl["training_set"], fe["training_set"]
    add(f"- Training set: featurelake returned **{ts_fl['rows_out']:,}** rows for {ts_fl['entity_rows']:,} entity "
        f"rows (exactly one per entity row, in order); Feast returned **{ts_fe['rows_out']:,}** "
        f"({chk['rows_only_in_featurelake']:,} entity rows dropped, {chk['feast_duplicate_rows']} duplicated). "
        f"On the {chk['common_rows']:,} rows both returned, **{chk['mismatched_rows']} differ** in any of the 20 "
        f"features (null and NaN equal, floats compared exactly). Rows with features: featurelake "
        f"{chk['featurelake_non_null']:,}, Feast {chk['feast_non_null']:,}.")  # fmt: skip
    _concurrency(add, fl, fe)
    if scale is not None:
        out.extend(scale_lines(scale))
        add("")
    add("## Our own `make bench`\n")
    add("`make bench` runs each of these in `.venv` and prints its table and ratio; each is measured against a "
        "reference doing the same work on the same machine in the same run (not against Feast). Run one with "
        "`.venv/bin/python benchmarks/<name>.py --help` for its options; the numbers of the latest runs are in "
        "each component's page (docs/*.md) and below when recorded.\n")  # fmt: skip
    add("| benchmark | measures | reference the ratio is against |")
    add("|---|---|---|")
    for name, what, ref in OWN_BENCHES:
        add(f"| [`benchmarks/{name}`](../benchmarks/{name}) | {what} | {ref} |")
    add("")
    own = Path(__file__).with_name("own-bench.md")
    if own.exists():
        add(own.read_text())
    path.write_text("\n".join(out) + "\n")


# --- the scale section (benchmarks/peers/scale_section.py's last-scale.json) -------------------------------

SCALE_START = "<!-- scale section: written by benchmarks/peers/report.py from last-scale.json -->"
SCALE_END = "<!-- end of the scale section -->"
# Issue 23's targets, largest size against the smallest: peak RSS <= 1.5x and <= 2 GB, time <= 11x for 10x rows.
RSS_RATIO, RSS_MAX_MB, TIME_RATIO = 1.5, 2048, 11.0
PAIRS = [("sync", "materialize", "sync to SQLite / Feast materialize to SQLite (its defaults)"),
         ("sync", "materialize_latest", "sync to SQLite / Feast materialize, `pull_latest_features`"),
         ("training", "historical", "training set / Feast get_historical_features")]  # fmt: skip


def _human(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def _cell(p: dict[str, Any] | None) -> str:
    if p is None:
        return "—"
    status = p.get("status", "finished")
    if status == "finished":
        return f"{p['seconds']:,.1f} s, {p['peak_rss_mb']:,.0f} MB"
    if status == "killed":
        return f"**killed** at {p['peak_rss_mb']:,.0f} MB after {p['seconds']:,.0f} s (the memory cap)"
    if status == "timed out":
        return f"**timed out** after {p['seconds']:,.0f} s ({p['peak_rss_mb']:,.0f} MB by then)"
    return f"**{status}** after {p['seconds']:,.0f} s, {p['peak_rss_mb']:,.0f} MB ({p.get('note', '')})"


def _load(p: dict[str, Any] | None) -> str:
    if p is None or "load" not in p:
        return "—"
    ld = p["load"]
    return f"{ld[0]:.1f}-{ld[1]:.1f}" if isinstance(ld, list) else f"{ld:.1f}"


def _targets(name: str, pts: list[dict[str, Any]]) -> str:
    small, large = pts[0], pts[-1]
    factor = large["rows"] / small["rows"]
    t_target = TIME_RATIO * factor / 10
    if large.get("status", "finished") != "finished":
        return (f"{name}: **not met** — at {_human(large['rows'])} it was {large['status']} "
                f"({large.get('note', '')})")  # fmt: skip
    rss = large["peak_rss_mb"] / small["peak_rss_mb"]
    t = large["seconds"] / small["seconds"]
    ok_rss = rss <= RSS_RATIO and large["peak_rss_mb"] <= RSS_MAX_MB
    return (f"{name}: peak RSS {rss:.2f}x ({large['peak_rss_mb']:,.0f} MB) — **{'met' if ok_rss else 'not met'}**; "
            f"time {t:.2f}x (target ≤ {t_target:.1f}x) — **{'met' if t <= t_target else 'not met'}**")  # fmt: skip


def scale_lines(s: dict[str, Any]) -> list[str]:
    """The markdown of the scale section, between SCALE_START and SCALE_END."""
    fl, fe = s["featurelake"], s["feast"]
    out = [SCALE_START, "## At scale: time and peak RSS against rows, beside Feast\n"]
    add = out.append
    add("![featurelake vs Feast: wall time and peak RSS against rows](img/scale-vs-feast.png)\n")
    add("The data of `benchmarks/scale.py` (one generator, `benchmarks/scale_data.py`): 30 days, one Parquet file a "
        "day, 12 columns (key, event time, 6 float64 and 4 int64 features), rows/60 entities, 500k entity rows for "
        "the training set. featurelake: `benchmarks/scale.py` (backfill into Iceberg, full sync to SQLite, "
        "training set, predict). Feast "
        f"{fe.get('feast_version', '')}: `benchmarks/peers/feast_scale.py` (file offline store reading the same "
        "Parquet directory, SQLite online store, no ttl like featurelake's view): `materialize` of the 30 days with "
        "Feast's defaults (the offline store returns every row of the window, deduplicated in memory: "
        "feast-dev/feast#6307), the same with Feast's own settings against that (`materialization: "
        "pull_latest_features: true`, the offline store returns each key's latest row, and "
        "`online_write_batch_size: 10000`), and `get_historical_features` of the same entity rows, written to "
        "Parquet. Every job is a fresh process; wall "
        "time and peak RSS are measured from outside (`os.wait4`), start-up and imports included. Feast's jobs run "
        f"under a guard: the process tree's resident memory is read every 50 ms and the tree killed past "
        f"{fe['cap_gb']:g} GB (**killed**), or past {fe['timeout_s']:,.0f} s (**timed out**); featurelake's jobs "
        "run unguarded. featurelake reads its own Iceberg table (its backfill is the extra step Feast does not "
        "do); Feast reads the Parquet directly.\n")  # fmt: skip
    m = s.get("machine") or {}
    add(f"Run of {s['date']}" + (f" on {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('memory_gib')} GiB" if m else "")
        + f"; featurelake's figures: {s['featurelake_source']}. Load average (1 minute) beside each figure: at the "
          "start and end of each Feast job, at the end of each featurelake job.\n")  # fmt: skip
    add("| rows | featurelake / Feast | featurelake | Feast | Feast / featurelake time | Feast / featurelake RSS "
        "| load avg (fl / Feast) |")  # fmt: skip
    add("|---:|---|---:|---:|---:|---:|---|")
    sizes = sorted({p["rows"] for pts in fe["feast"].values() for p in pts})
    for rows in sizes:
        for fl_job, fe_job, label in PAIRS:
            a = next((p for p in fl.get(fl_job, []) if p["rows"] == rows), None)
            b = next((p for p in fe["feast"].get(fe_job, []) if p["rows"] == rows), None)
            ok = a is not None and b is not None and b.get("status", "finished") == "finished"
            tr = f"{b['seconds'] / a['seconds']:.1f}x" if ok and a and b else "—"
            rr = f"{b['peak_rss_mb'] / a['peak_rss_mb']:.1f}x" if ok and a and b else "—"
            add(
                f"| {_human(rows)} | {label} | {_cell(a)} | {_cell(b)} | {tr} | {rr} | {_load(a)} / {_load(b)} |"
            )
    add("")
    both = [
        (a, b)
        for a, b in zip(fl.get("backfill", []), fl.get("sync", []), strict=False)
        if a["rows"] == b["rows"]
    ]
    if both:
        add("- featurelake's whole path from the Parquet, backfill + sync (the backfill writes and audits the Iceberg "
            "table the sync, training set and predict read): "
            + "; ".join(f"{_human(a['rows'])}: {a['seconds'] + b['seconds']:,.1f} s, peak RSS "
                        f"{max(a['peak_rss_mb'], b['peak_rss_mb']):,.0f} MB" for a, b in both) + ".")  # fmt: skip
    extra = []
    for job in ("materialize", "materialize_latest"):
        for p in fe["feast"].get(job, []):
            if "keys" in p:
                extra.append(
                    f"{job} {_human(p['rows'])}: {p['keys']:,} keys of {entities_for(p['rows']):,} entities"
                )
    if extra:
        add("- Feast's materialize wrote the latest values of every key with rows into SQLite (" + "; ".join(extra)
            + ").")  # fmt: skip
    rows_out = [
        f"{_human(p['rows'])}: {p['rows_out']:,}"
        for p in fe["feast"].get("historical", [])
        if "rows_out" in p
    ]
    if rows_out:
        add("- Feast's historical retrieval returned, of the 500,000 entity rows, " + "; ".join(rows_out) + " rows "
            "(it leaves out entity rows with no feature row at or before their time; featurelake returns every "
            "entity row, with nulls where there is no match).")  # fmt: skip
    add("")
    add("**Issue 23's targets** (largest size against the smallest: peak RSS ≤ 1.5x and ≤ 2 GB; time ≤ 11x for 10x "
        "the rows), applied to both:\n")  # fmt: skip
    for job, pts in fl.items():
        if len(pts) > 1:
            add(f"- featurelake {_targets(job, pts)}")
    for job, pts in fe["feast"].items():
        if len(pts) > 1:
            add(f"- Feast {_targets(job, pts)}")
    add("\nReproduce: `make bench-peers` (the scale section runs by default, `ARGS='--scale-sizes 3M,10M'` for a quick "
        "one, `--no-scale` to skip it, `--scale-only` for it alone).\n")  # fmt: skip
    add(SCALE_END)
    return out


def write_scale_section(s: dict[str, Any], path: Path) -> None:
    """Replace the scale section of ``path`` (or add it before "## Our own `make bench`")."""
    text = path.read_text()
    new = "\n".join(scale_lines(s))
    if SCALE_START in text and SCALE_END in text:
        head, rest = text.split(SCALE_START, 1)
        _, tail = rest.split(SCALE_END, 1)
        text = head + new + tail
    else:
        marker = "## Our own `make bench`"
        text = text.replace(marker, new + "\n\n" + marker, 1) if marker in text else text + "\n" + new + "\n"
    path.write_text(text)
