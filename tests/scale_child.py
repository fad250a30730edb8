"""A backfill or a sync under a memory cap, in a process of its own (run by tests/test_scale_memory.py).

    python -m tests.scale_child PROJECT (backfill|sync|reaudit|reaudit-read) BUDGET_BYTES START WARM_END END

The process first runs the same job on a small piece (a backfill of view ``warm`` from START to WARM_END, a
sync of view ``warm1``, one day; both identical to ``big``): every thread pool, allocator arena and import the
job needs exists afterwards. Then it caps its address space (``RLIMIT_AS``) at
its peak so far plus ``BUDGET_BYTES`` and runs the job over the whole window (view ``big``). It prints one JSON
line: what the job published, the cap and the virtual memory before it; or the error the job stopped with.

``reaudit`` re-audits and publishes the kept branch of run ``kept`` (``featurelake audit``/``publish --run-id``),
warming up on view ``warm``'s; ``reaudit-read`` re-audits it with the window read into memory instead of
streamed (the path a table the files do not fit takes), warming up on view ``warm1``'s.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from datetime import date, timedelta
from typing import Any

#: The run id of the kept branches the ``reaudit`` jobs re-audit and publish.
KEPT = "kept"


def vm_bytes(key: str) -> int:
    """``VmPeak``/``VmSize`` of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _day_after(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def main(argv: list[str]) -> int:
    root, job, budget, start, warm_end, end = argv[0], argv[1], int(argv[2]), argv[3], argv[4], argv[5]
    import featurelake
    from featurelake.lakehouse import lineage

    out: dict[str, Any] = {"job": job}
    with featurelake.open(root) as fl:
        if job == "backfill":
            fl.apply()
            fl.backfill("warm", start, warm_end)
            fl.backfill("warm1", start, (_day_after(start)))  # for the sync's warm-up: one day, one group
        elif job == "sync":
            fl.sync("warm1")
        else:
            from featurelake.engines.local import LocalEngine
            from featurelake.lakehouse.window import Window

            if job == "reaudit-read":
                from pyiceberg.utils.concurrent import ExecutorFactory

                LocalEngine.branch_window = lambda *a, **k: None  # type: ignore[method-assign]
                # Every thread of PyIceberg's read pool started now (a thread's stack is address space too):
                # the warm-up's one file starts one, the window's files would start the rest under the cap.
                list(ExecutorFactory.get_or_create().map(lambda _: time.sleep(0.05), range(64)))
            warm = "warm" if job == "reaudit" else "warm1"
            fl.audit(warm, KEPT)
            fl.publish(warm, KEPT)
            tbl = fl.project.load_table("big")
            tip = tbl.metadata.refs["audit_" + KEPT].snapshot_id
            engine = fl.project.engine
            assert isinstance(engine, LocalEngine)
            out["streamed"] = engine.branch_window(tbl, tip, Window.parse(start, end), "event_ts") is not None
        out["vm_before"] = vm_bytes("VmPeak")
        out["cap"] = cap = out["vm_before"] + budget
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            if job == "backfill":
                result = fl.backfill("big", start, end)
                out["rows"] = result.rows
                out["snapshots"] = sum(
                    1
                    for s in fl.project.load_table("big").metadata.snapshots
                    if s.summary is not None
                    and s.summary.additional_properties.get(lineage.RUN_ID) == result.run_id
                )
            elif job == "sync":
                (synced,) = fl.sync("big")
                out["rows"], out["keys"], out["mode"] = synced.rows, synced.keys, synced.mode
            else:
                report = fl.audit("big", KEPT)
                out["audit_rows"], out["audit_passed"] = report.rows, report.passed
                if job == "reaudit":
                    published = fl.publish("big", KEPT)
                    out["rows"], out["rebases"] = published.rows, published.rebases
        except Exception as exc:  # reported to the test, which judges the message
            from featurelake.memory import is_out_of_memory

            out["error"] = f"{type(exc).__name__}: {exc}"
            out["out_of_memory"] = is_out_of_memory(exc)
        out["vm_peak"] = vm_bytes("VmPeak")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
