"""The files of one Iceberg table: what its metadata reaches, what is stored under its location, deletion.

Object storage works as local disk does: listings go through the table's FileIO (on S3, PyArrow's client with
the project's ``storage.s3`` settings), whose modification times are the objects' ``LastModified``.

Paths are compared by a normalised key (the path part of the URI, so ``s3://b/k`` and ``s3a://b/k`` or
``file:///x`` and ``file:/x`` are the same file): the known Iceberg data-loss reports of orphan removal come
from comparing URIs that differ only in scheme or authority.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.manifest import ManifestEntryStatus, ManifestFile
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import Snapshot

from featurelake.lakehouse.storage import Storage

Progress = Callable[[str], None]

#: Files a catalog implementation may keep under the table location without metadata naming them.
NEVER_DELETE = frozenset({"version-hint.text"})


def file_key(uri: str) -> str:
    """The comparison key of a file URI: its path (with the bucket for object stores), normalised."""
    scheme, netloc, path = PyArrowFileIO.parse_location(uri)
    if scheme in ("hdfs", "viewfs"):
        path = f"{netloc}{path}"
    return os.path.normpath(path) if scheme == "file" else path.rstrip("/")


@dataclass(frozen=True)
class StoredFile:
    """A file found under a table location."""

    uri: str
    size: int
    modified: datetime | None

    @property
    def key(self) -> str:
        return file_key(self.uri)


def _filesystem(io: FileIO, location: str) -> tuple[pafs.FileSystem, str, Callable[[str], str]]:
    scheme, netloc, path = PyArrowFileIO.parse_location(location)
    # The table's own FileIO client (S3 endpoint, region, addressing and retries from the catalog's
    # properties); another FileIO gets the same client from lakehouse.storage.
    fs = (
        io.fs_by_scheme(scheme, netloc)
        if isinstance(io, PyArrowFileIO)
        else Storage.from_properties(io.properties).filesystem(location)[0]
    )

    def to_uri(listed: str) -> str:
        if scheme == "file":
            return "file://" + listed
        if scheme in ("hdfs", "viewfs"):
            return f"{scheme}://{netloc}{listed}"
        return f"{scheme}://{listed}"

    return fs, path, to_uri


def list_files(io: FileIO, location: str) -> list[StoredFile]:
    """Every file under ``location`` (recursively), with size and modification time."""
    fs, root, to_uri = _filesystem(io, location)
    infos = fs.get_file_info(pafs.FileSelector(root.rstrip("/") + "/", recursive=True, allow_not_found=True))
    return [
        StoredFile(to_uri(i.path), int(i.size or 0), i.mtime) for i in infos if i.type == pafs.FileType.File
    ]


def file_info(io: FileIO, uri: str) -> StoredFile | None:
    """Size and modification time of one file, or None when it does not exist."""
    fs, path, _ = _filesystem(io, uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    return StoredFile(uri, int(info.size or 0), info.mtime)


@dataclass
class Reachable:
    """Files that table metadata reaches, by kind (normalised keys)."""

    metadata_files: set[str] = field(default_factory=set)
    manifest_lists: set[str] = field(default_factory=set)
    manifests: set[str] = field(default_factory=set)
    content_files: set[str] = field(default_factory=set)
    statistics_files: set[str] = field(default_factory=set)
    #: The URI each key was found under (for deleting and sizing it).
    uris: dict[str, str] = field(default_factory=dict)

    def add(self, kind: set[str], uri: str) -> None:
        key = file_key(uri)
        kind.add(key)
        self.uris.setdefault(key, uri)

    def all(self) -> set[str]:
        return (
            self.metadata_files
            | self.manifest_lists
            | self.manifests
            | self.content_files
            | self.statistics_files
        )


class ManifestReader:
    """Reads manifests once per run: snapshots share most of their manifests."""

    def __init__(self, io: FileIO) -> None:
        self.io = io
        self._lists: dict[str, list[ManifestFile]] = {}
        self._entries: dict[str, list[tuple[str, bool]]] = {}

    def manifests(self, snapshot: Snapshot) -> list[ManifestFile]:
        if snapshot.manifest_list not in self._lists:
            self._lists[snapshot.manifest_list] = snapshot.manifests(self.io)
        return self._lists[snapshot.manifest_list]

    def entries(self, manifest: ManifestFile) -> list[tuple[str, bool]]:
        """``(file uri, live)`` for every entry; live means ADDED or EXISTING."""
        path = manifest.manifest_path
        if path not in self._entries:
            self._entries[path] = [
                (e.data_file.file_path, e.status != ManifestEntryStatus.DELETED)
                for e in manifest.fetch_manifest_entry(self.io, discard_deleted=False)
            ]
        return self._entries[path]


def snapshot_files(
    reader: ManifestReader, snapshots: Iterable[Snapshot], *, live_only: bool = True
) -> Reachable:
    """Manifest lists, manifests and content files of ``snapshots`` (all entries unless ``live_only``)."""
    out = Reachable()
    for snap in snapshots:
        out.add(out.manifest_lists, snap.manifest_list)
        for manifest in reader.manifests(snap):
            out.add(out.manifests, manifest.manifest_path)
            for uri, live in reader.entries(manifest):
                if live or not live_only:
                    out.add(out.content_files, uri)
    return out


def reachable(
    metadata: TableMetadata,
    metadata_location: str,
    reader: ManifestReader,
    snapshots: Iterable[Snapshot] | None = None,
) -> Reachable:
    """Everything ``metadata`` reaches: itself, its logged predecessors, statistics, and every snapshot's
    manifest list, manifests and live data and delete files (``snapshots`` narrows the last part)."""
    out = snapshot_files(reader, metadata.snapshots if snapshots is None else snapshots)
    out.add(out.metadata_files, metadata_location)
    for m in metadata.metadata_log:
        out.add(out.metadata_files, m.metadata_file)
    for s in [*metadata.statistics, *metadata.partition_statistics]:
        out.add(out.statistics_files, s.statistics_path)
    return out


def metadata_dir(tbl: Table) -> str:
    """Where the table writes metadata files (``write.metadata.path`` or ``<location>/metadata``)."""
    return (
        tbl.metadata.properties.get("write.metadata.path") or tbl.metadata.location.rstrip("/") + "/metadata"
    )


def is_table_file(uri: str) -> bool:
    return os.path.basename(urlparse(uri).path) not in NEVER_DELETE


def delete_file(io: FileIO, uri: str) -> bool:
    """Delete one file; False when it was already gone (another maintenance run got there first)."""
    try:
        io.delete(uri)
    except FileNotFoundError:
        return False
    return True


def delete_all(io: FileIO, files: list[StoredFile], progress: Progress | None, what: str) -> tuple[int, int]:
    """Delete ``files``; returns (files deleted, bytes reclaimed)."""
    count = size = 0
    step = max(1, len(files) // 10)
    for i, f in enumerate(files, 1):
        if delete_file(io, f.uri):
            count += 1
            size += f.size
        if progress is not None and (i % step == 0 or i == len(files)):
            progress(f"{what}: deleted {i}/{len(files)} files")
    return count, size
