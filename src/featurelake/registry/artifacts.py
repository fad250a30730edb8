"""Content-addressed artifact storage: ``<registry.artifacts>/sha256/<digest>``, a local path or a URL.

URLs (``s3://bucket/artifacts``) go through ``lakehouse.storage``: PyArrow's S3 client with the project's
``storage.s3`` settings and the AWS credential chain, behind fsspec's interface.

A blob's name is the SHA-256 of its bytes, so storing the same model twice stores it once, and a load can
always check that what it reads is what was registered: every read re-hashes the bytes and refuses a
mismatch. Keys are validated before they touch the filesystem, so a tampered database row cannot make the
store read outside its root.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from featurelake.errors import ArtifactIntegrityError, UsageError
from featurelake.lakehouse.storage import Storage

_KEY = re.compile(r"^sha256/[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredArtifact:
    """Where an artifact went and what it was."""

    key: str
    sha256: str
    size: int
    name: str


def _copy_hashing(src: IO[bytes], dst: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(_CHUNK):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class ArtifactStore:
    """Blobs under ``root`` (a local directory or a URL such as ``s3://bucket/artifacts``)."""

    def __init__(self, root: str, storage: Storage | None = None) -> None:
        self.root = root
        self.storage = storage or Storage()
        fs, base = self.storage.fsspec(root)
        self.fs: AbstractFileSystem = fs
        self.base = base.rstrip("/") or "/"

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @staticmethod
    def key_for(sha256: str) -> str:
        return f"sha256/{sha256}"

    def location(self, key: str) -> str:
        """The filesystem path of ``key``; refuses keys that are not content addresses or leave the root."""
        norm = posixpath.normpath(key) if key else ""
        if not key or key.startswith(("/", "\\")) or "\\" in key or norm == ".." or norm.startswith("../"):
            raise UsageError(
                f"artifact path {key!r} escapes the artifact root {self.root}: registry artifacts are addressed "
                "as sha256/<digest> inside it"
            )
        if not _KEY.fullmatch(key):
            raise UsageError(f"artifact path {key!r} is not a content address (sha256/<64 hex digits>)")
        return f"{self.base}/{key}"

    # --- writing ------------------------------------------------------------------------------------
    def put(self, source: str | Path) -> StoredArtifact:
        """Copy the file at ``source`` (a local path or a URL) into the store, hashing it on the way."""
        text = str(source)
        if "://" in text:
            src_fs, src_path = self.storage.fsspec(text)
        else:
            src_fs, src_path = LocalFileSystem(), str(Path(text).expanduser().resolve())
        if not src_fs.exists(src_path):
            raise UsageError(f"artifact {text} does not exist: give the path of the model file to register")
        if src_fs.isdir(src_path):
            raise UsageError(
                f"artifact {text} is a directory: register a single file (pack a directory as .zip or .tar first)"
            )
        with src_fs.open(src_path, "rb") as src:
            return self._store(src, posixpath.basename(src_path.rstrip("/")))

    def put_bytes(self, data: bytes, name: str) -> StoredArtifact:
        """Store ``data`` (e.g. a serialized entity frame) under its SHA-256; ``name`` is only recorded."""
        return self._store(io.BytesIO(data), name)

    def _store(self, src: IO[bytes], name: str) -> StoredArtifact:
        tmp = f"{self.base}/tmp/{uuid.uuid4().hex}"
        self.fs.makedirs(f"{self.base}/tmp", exist_ok=True)
        try:
            with self.fs.open(tmp, "wb") as dst:
                sha, size = _copy_hashing(src, dst)
            key = self.key_for(sha)
            final = self.location(key)
            self.fs.makedirs(f"{self.base}/sha256", exist_ok=True)
            if self.fs.exists(final) and self._digest(final) == sha:
                self.fs.rm(tmp)
            else:
                # Missing, or a damaged copy: the fresh bytes replace it (their digest is the name).
                if self.fs.exists(final) and self.is_local:
                    os.chmod(final, 0o644)
                self.fs.mv(tmp, final)
                if self.is_local:
                    os.chmod(final, 0o444)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
        return StoredArtifact(key=key, sha256=sha, size=size, name=name)

    # --- reading ------------------------------------------------------------------------------------
    def _digest(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def _check(self, key: str, sha256: str, what: str) -> str:
        if key != self.key_for(sha256):
            raise ArtifactIntegrityError(
                f"{what}: its artifact path {key!r} does not match its recorded digest sha256/{sha256}; "
                "the registry record was altered; refusing to load"
            )
        path = self.location(key)
        if not self.fs.exists(path):
            raise ArtifactIntegrityError(
                f"{what}: artifact {key} is missing from {self.root}; restore it, or register the model again"
            )
        return path

    def read_verified(self, key: str, sha256: str, what: str) -> bytes:
        """The artifact's bytes, after checking they hash to ``sha256``."""
        path = self._check(key, sha256, what)
        with self.fs.open(path, "rb") as f:
            data: bytes = f.read()
        found = hashlib.sha256(data).hexdigest()
        if found != sha256:
            raise _mismatch(what, key, sha256, found, self.root)
        return data

    def verify(self, key: str, sha256: str, what: str) -> str:
        """Check the stored blob against ``sha256``; returns its filesystem path."""
        path = self._check(key, sha256, what)
        found = self._digest(path)
        if found != sha256:
            raise _mismatch(what, key, sha256, found, self.root)
        return path

    def verified_path(self, key: str, sha256: str, what: str, cache_dir: Path) -> Path:
        """A local file with the artifact's verified bytes: the blob itself in a local store, else a cached copy."""
        if self.is_local:
            return Path(self.verify(key, sha256, what))
        target = cache_dir / key
        if not (target.is_file() and _file_digest(target) == sha256):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
            tmp.write_bytes(self.read_verified(key, sha256, what))
            tmp.replace(target)
        found = _file_digest(target)
        if found != sha256:  # pragma: no cover - the copy was verified just above
            raise _mismatch(what, key, sha256, found, str(cache_dir))
        return target


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(what: str, key: str, expected: str, found: str, root: str) -> ArtifactIntegrityError:
    return ArtifactIntegrityError(
        f"{what}: artifact {key} in {root} does not match its recorded digest (expected sha256 {expected[:16]}..., "
        f"found {found[:16]}...): it was modified or corrupted, so it is refused; restore the original file or "
        "register the model again"
    )
