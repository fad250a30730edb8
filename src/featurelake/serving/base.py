"""The online store interface: latest feature values per (view, entity key), plus each view's sync watermark.

A store is opened for one :class:`~featurelake.serving.scope.StoreScope` (project, catalog, namespace) and
never reads or writes outside it, so projects and namespaces can share one SQLite file or one Redis; the
``view`` every method takes is a view of that scope. Within the scope a store holds one record per
(view, key): the event time of the row (microseconds since the epoch, UTC), the Iceberg sequence number of
the snapshot that added it, and the row's feature values as a JSON object (``codec.py``). Keys are strings
at this boundary (an integer key ``42`` is stored as ``"42"``, a composite key as its values joined by ``,``
after escaping: ``features/keys.py``); typing them is the lookup layer's job.

Write semantics, decided per key and atomically by the store (never read-then-write from the client):
a record replaces the stored one when its ``(event_ts, seq)`` is greater, i.e. a newer event, or the same event
committed by a newer snapshot (a corrected backfill). Replaying old history therefore never overwrites fresher
values. ``force=True`` replaces unconditionally: the sync uses it to make keys match main exactly (full
resyncs, rows whose newest version a backfill removed).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from featurelake.config import ProjectConfig
    from featurelake.serving.scope import StoreScope

#: What a read returns for one key: (event_ts in µs, JSON payload), or None when the key is absent.
Stored = tuple[int, bytes | str] | None


@dataclass(frozen=True)
class Records:
    """Rows to write to one view, column-wise: parallel lists of equal length."""

    keys: list[str]
    event_ts: list[int]
    seqs: list[int]
    payloads: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def slice(self, start: int, stop: int) -> Records:
        return Records(
            self.keys[start:stop], self.event_ts[start:stop], self.seqs[start:stop], self.payloads[start:stop]
        )


@dataclass(frozen=True)
class Watermark:
    """The last snapshot of main a view was completely synced from (stored in the online store itself)."""

    snapshot_id: int
    sequence_number: int
    table_uuid: str
    synced_at: str
    key_type: str | None = None
    """``long`` or ``string``: the table's join key type, so lookups need not open the catalog; for a
    composite key the type of each key column in order, joined by ``,`` (``long,string``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Watermark:
        return cls(
            snapshot_id=int(data["snapshot_id"]),
            sequence_number=int(data["sequence_number"]),
            table_uuid=str(data["table_uuid"]),
            synced_at=str(data["synced_at"]),
            key_type=data.get("key_type"),
        )


class OnlineStore(ABC):
    """Latest feature values per (view, key) with (event_ts, seq) write semantics, and sync watermarks.

    Every method raises ``OnlineStoreUnavailableError`` (naming the store and what to check) when the backend
    cannot be reached; nothing else leaks backend exceptions.
    """

    #: Name used in config (``online_store.type``) and in the Iceberg tag that keeps the synced snapshot.
    type_name: ClassVar[str] = "store"
    #: Whose keys this store reads and writes (set by the constructor).
    scope: StoreScope

    @classmethod
    @abstractmethod
    def from_config(cls, config: ProjectConfig) -> OnlineStore:
        """The store described by the project's ``online_store`` section."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the data lives, for messages (a file path or a Redis URL without password)."""

    @abstractmethod
    def write(self, view: str, records: Records, *, force: bool = False) -> int:
        """Apply ``records`` with the (event_ts, seq) rule (or unconditionally); returns keys changed."""

    @abstractmethod
    def delete(self, view: str, keys: Sequence[str]) -> int:
        """Remove ``keys`` of ``view``; returns how many existed."""

    @abstractmethod
    def read(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[Stored]]:
        """Look up many keys of several views in one round trip; results follow the request order."""

    @abstractmethod
    def keys(self, view: str) -> Iterator[str]:
        """Every key stored for ``view`` (in no particular order)."""

    @abstractmethod
    def get_watermark(self, view: str) -> Watermark | None:
        """The view's sync watermark, or None before its first complete sync."""

    @abstractmethod
    def set_watermark(self, view: str, watermark: Watermark) -> None:
        """Record that ``view`` is completely synced up to ``watermark``."""

    @abstractmethod
    def ping(self) -> None:
        """Check the store answers (raises OnlineStoreUnavailableError otherwise)."""

    def has_legacy(self, view: str) -> bool:
        """Whether the store holds data of ``view`` in the layout before scopes (never read; see scope.py)."""
        return False

    def drop_legacy(self, view: str) -> int:
        """Remove ``view``'s data of the layout before scopes; returns how many keys were removed."""
        return 0

    def count(self, view: str) -> int:
        """How many keys ``view`` has."""
        return sum(1 for _ in self.keys(view))

    def newest_event_ts(self, view: str) -> int | None:
        """The newest event time (µs) the store has made visible for ``view``, or None when it holds none.

        The server's ``featurelake_online_visibility_lag_seconds`` is now minus this. Stores keep it as a
        marker their writes raise (one read, whatever the number of keys; deleting keys does not lower it);
        this default reads every key once, for a store that keeps no marker.
        """
        keys = list(self.keys(view))
        newest: int | None = None
        for start in range(0, len(keys), 10_000):
            for hit in self.read([(view, keys[start : start + 10_000])])[0]:
                if hit is not None and (newest is None or hit[0] > newest):
                    newest = hit[0]
        return newest

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["OnlineStore", "Records", "Stored", "Watermark"]
