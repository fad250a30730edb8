"""The audit-log and statistics rows of micro-batches, appended to their tables several batches at a time.

A micro-batch audits before it commits; its verdicts belong in ``<namespace>._audits`` and, once it is
published, its statistics in ``<namespace>._stats``. Each is an Iceberg append of a handful of rows: two
commits per batch, as many as the batch's own. A :class:`LogSpool` writes them instead to a spool file first
(Arrow IPC, fsynced, renamed into place) under ``<state dir>/log-spool/<writer>/`` (the verdicts before the
batch's commit, so no published row lacks its recorded audit; the statistics right after it) and appends
the spooled rows of each table in one commit every ``every`` batches (:meth:`LogSpool.due`), when the
consumer goes idle and when it stops (:meth:`LogSpool.flush`); the files are removed after the append.

Nothing is lost in a crash: a writer holds an exclusive ``flock`` on its directory's ``lock`` file while it
lives, and a spool opened later (any micro-batch writer of the project, e.g. the restarted consumer) takes
over every directory whose lock is free, appends what it holds and removes it. Rows a crashed writer had
appended but not yet removed are recognised (audit id; run, snapshot and column) and not appended twice.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pyarrow as pa
from pyiceberg.expressions import In
from pyiceberg.schema import Schema

from featurelake.auditing import audit_log, logtable, stats_log
from featurelake.lakehouse import lineage
from featurelake.lakehouse.storage import writing

if TYPE_CHECKING:
    from featurelake.project import Project
    from featurelake.validation.audit import AuditReport

#: The spooled tables: name -> (schema, the columns that identify a row already appended).
TABLES: dict[str, tuple[Schema, tuple[str, ...]]] = {
    audit_log.TABLE: (audit_log.SCHEMA, ("audit_id", "check", "column")),
    stats_log.TABLE: (stats_log.SCHEMA, ("run_id", "snapshot_id", "column")),
}
#: ``featurelake.operation`` of a spool's append.
OPERATION = "micro-batch-logs"


@dataclass
class _Dir:
    """One writer's spool directory and the files in it, per table."""

    path: Path
    files: dict[str, list[Path]] = field(default_factory=dict)
    lock: IO[bytes] | None = None


class LogSpool:
    """Spools one writer's log rows and appends them every ``every`` batches (see the module docstring)."""

    def __init__(self, project: Project, every: int = 1) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        self.project = project
        self.every = every
        self.root = project.config.state_dir / "log-spool"
        self._own: _Dir | None = None
        self._batches = 0
        self._adopted = False

    # --- writing ------------------------------------------------------------------------------------------
    def _dir(self) -> _Dir:
        if self._own is None:
            name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
            path, tmp = self.root / name, self.root / f".{name}"
            with writing(path, "create the micro-batch log spool"):
                # Locked before it appears under its name: another spool never takes it for a dead writer's.
                tmp.mkdir(parents=True)
                lock = (tmp / "lock").open("wb")
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.rename(path)
            self._own = _Dir(path, lock=lock)
        return self._own

    def add(self, table: str, rows: pa.Table, run_id: str) -> None:
        """Spool ``rows`` of ``table`` (``_audits`` or ``_stats``) durably (fsynced) before returning."""
        own = self._dir()
        path = own.path / f"{table}.{run_id}.{uuid.uuid4().hex[:8]}.arrow"
        tmp = path.with_suffix(".tmp")
        with writing(path, "spool the micro-batch's log rows"):
            with tmp.open("wb") as f:
                with pa.ipc.new_file(f, rows.schema) as ipc:
                    ipc.write_table(rows)
                f.flush()
                os.fsync(f.fileno())
            tmp.rename(path)
            _fsync_dir(own.path)
        own.files.setdefault(table, []).append(path)

    def audit(self, report: AuditReport) -> None:
        """Spool an audit's verdicts (``run_audit``'s ``log``)."""
        self.add(audit_log.TABLE, audit_log.rows_of(report), report.run_id)

    def published(self, report: AuditReport, snapshot_id: int) -> None:
        """Spool the statistics of a run published as ``snapshot_id``; one more batch towards a flush."""
        self.add(stats_log.TABLE, stats_log.rows_of(report, snapshot_id), report.run_id)

    def batch_done(self) -> None:
        self._batches += 1

    @property
    def due(self) -> bool:
        """``every`` batches (or more) were spooled since the last flush."""
        return self._batches >= self.every

    @property
    def pending(self) -> int:
        """Spooled files of this writer not appended yet."""
        return sum(len(v) for v in self._own.files.values()) if self._own is not None else 0

    # --- appending ----------------------------------------------------------------------------------------
    def flush(self) -> int:
        """Append every spooled row of this writer (and, the first time, of writers that died) in one commit
        per table, then remove their files; returns the rows appended. Raises CatalogUnavailableError and the
        like when the log tables cannot be written (the files stay for the next flush)."""
        appended = 0
        if not self._adopted:
            self._adopted = True
            for orphan in self._orphans():
                appended += self._append(orphan, dedup=True)
                shutil.rmtree(orphan.path, ignore_errors=True)
                if orphan.lock is not None:
                    orphan.lock.close()
        if self._own is not None:
            appended += self._append(self._own, dedup=False)
            self._release()  # nothing spooled any more: no directory or lock held between flushes
        self._batches = 0
        return appended

    def _release(self) -> None:
        own, self._own = self._own, None
        if own is None:
            return
        if not any(own.files.values()):
            shutil.rmtree(own.path, ignore_errors=True)
        if own.lock is not None:
            own.lock.close()

    def _append(self, spool: _Dir, *, dedup: bool) -> int:
        total = 0
        for table, paths in list(spool.files.items()):
            if not paths:
                continue
            schema, ident = TABLES[table]
            target = schema.as_arrow()
            rows = pa.concat_tables([_read(p).cast(target) for p in paths])
            if dedup:
                rows = self._not_logged(table, rows, ident)
            if rows.num_rows:
                run_id = f"logs-{lineage.new_run_id()}"
                logtable.append(self.project, table, schema, rows, run_id, OPERATION)
                total += rows.num_rows
            for p in paths:
                p.unlink(missing_ok=True)
            spool.files[table] = []
        return total

    def _not_logged(self, table: str, rows: pa.Table, ident: tuple[str, ...]) -> pa.Table:
        """``rows`` minus those the table holds already (a writer that died between append and cleanup)."""
        runs = set(rows.column("run_id").to_pylist())
        held = logtable.scan(self.project, table, In("run_id", runs))  # type: ignore[call-arg, arg-type]
        if held is None or held.num_rows == 0:
            return rows
        seen = {tuple(r[c] for c in ident) for r in held.select(list(ident)).to_pylist()}
        keep = [tuple(r[c] for c in ident) not in seen for r in rows.select(list(ident)).to_pylist()]
        return rows.filter(pa.array(keep, pa.bool_())) if not all(keep) else rows

    def _orphans(self) -> list[_Dir]:
        """Spool directories whose writer is gone (their lock is free), locked by us now."""
        found: list[_Dir] = []
        if not self.root.is_dir():
            return found
        mine = self._own.path if self._own is not None else None
        for path in sorted(self.root.iterdir()):
            if path == mine or path.name.startswith(".") or not path.is_dir():
                continue
            try:
                lock = (path / "lock").open("ab")
            except OSError:
                continue
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()  # a live writer's
                continue
            spool = _Dir(path, lock=lock)
            for f in sorted(path.glob("*.arrow")):
                table = f.name.split(".", 1)[0]
                if table in TABLES:
                    spool.files.setdefault(table, []).append(f)
            found.append(spool)
        return found

    def close(self) -> None:
        """Flush, then remove this writer's (now empty) spool directory. A failing flush leaves the files
        for the next spool of the project to append, and raises."""
        try:
            self.flush()
        finally:
            self._release()


def _read(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as source:  # read into memory: the file is removed after the append
        return pa.ipc.open_file(source).read_all()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["OPERATION", "TABLES", "LogSpool"]
