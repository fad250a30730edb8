"""A backfill or a sync under a memory cap, in a process of its own (run by tests/test_scale_memory.py).

    python -m tests.scale_child PROJECT (backfill|sync) BUDGET_BYTES START WARM_END END

The process first runs the same job on a small piece (a backfill of view ``warm`` from START to WARM_END, a
sync of view ``warm1``, one day; both identical to ``big``): every thread pool, allocator arena and import the
job needs exists afterwards. Then it caps its address space (``RLIMIT_AS``) at
its peak so far plus ``BUDGET_BYTES`` and runs the job over the whole window (view ``big``). It prints one JSON
line: what the job published, the cap and the virtual memory before it; or the error the job stopped with.
"""

from __future__ import annotations

import json
import resource
import sys
from datetime import date, timedelta
from typing import Any


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
        else:
            fl.sync("warm1")
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
            else:
                (synced,) = fl.sync("big")
                out["rows"], out["keys"], out["mode"] = synced.rows, synced.keys, synced.mode
        except Exception as exc:  # reported to the test, which judges the message
            out["error"] = f"{type(exc).__name__}: {exc}"
        out["vm_peak"] = vm_bytes("VmPeak")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
