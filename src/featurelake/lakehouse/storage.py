"""Where files live: one place that turns a location (a local path or a URL) into a filesystem.

Every file featurelake touches goes through here: the warehouse (``iceberg_properties`` for PyIceberg's
FileIO), ``Source.parquet`` globs (``glob``), registry artifacts (``fsspec``), training-set, ``read`` and audit
outputs (``write_parquet``, ``write_csv``, ``write_text``), and maintenance's listings (through the table's
FileIO, built from the same properties; ``Storage.from_properties`` turns them back into a ``Storage``).

- ``s3://`` (``s3a://`` and ``s3n://`` are the same, Hadoop's names) is configured by the ``storage.s3``
  section: ``endpoint``, ``region``, ``path_style``. Credentials always come from the standard AWS chain
  (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the shared
  files, an instance or task role), never from featurelake's configuration.
- ``gs://``/``gcs://`` and ``abfs://``/``abfss://``/``az://`` go through PyArrow's own filesystems
  (``FileSystem.from_uri``) with their own environment credentials; nothing in this module is specific to S3
  but ``_s3``, so a section for them is one function away. Only S3 is tested (docs/storage.md).

Why PyArrow's ``S3FileSystem`` rather than fsspec's s3fs: PyIceberg's ``PyArrowFileIO`` already uses it for
the warehouse, so the source reader, the artifact store, outputs and the warehouse share one client, one
credential chain and one retry policy (AWS's standard retries: throttling such as ``503 SlowDown``, 5xx answers
and dropped connections, with exponential backoff), and no second S3 stack (s3fs pins aiobotocore/botocore) is
installed. The artifact store keeps its fsspec interface through fsspec's ``ArrowFSWrapper``.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from featurelake.config import canonical_url
from featurelake.errors import ConfigError, FeaturelakeError, StorageUnavailableError, UsageError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from featurelake.config import StorageConfig

S3_SCHEMES = frozenset({"s3", "s3a", "s3n"})
#: Tries of one S3 request (the first included) under AWS's standard retry policy.
S3_ATTEMPTS = 6
#: PyIceberg FileIO property names (pyiceberg.io) this module writes and reads back.
P_ENDPOINT, P_REGION, P_VIRTUAL, P_RETRY = (
    "s3.endpoint",
    "s3.region",
    "s3.force-virtual-addressing",
    "s3.retry-strategy-impl",
)


class ObjectStoreRetry(pafs.AwsStandardS3RetryStrategy):
    """AWS's standard retry policy with ``S3_ATTEMPTS`` tries; PyIceberg instantiates it by name
    (``s3.retry-strategy-impl``), so it takes no arguments."""

    def __init__(self) -> None:
        super().__init__(max_attempts=S3_ATTEMPTS)


def scheme(location: str | Path) -> str:
    """The URL scheme of ``location`` in lower case (``s3a``/``s3n`` give ``s3``), or ``""`` for a local path."""
    text = str(location)
    if "://" not in text:
        return ""
    found = text.split("://", 1)[0].lower()
    return "s3" if found in S3_SCHEMES else found


def is_remote(location: str | Path) -> bool:
    """True for object-store URLs (anything with a scheme other than ``file``)."""
    return scheme(location) not in ("", "file")


def _has_glob(part: str) -> bool:
    return any(c in part for c in "*?[")


def _segment_regex(part: str) -> str:
    out, i = [], 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := part.find("]", i + 2)) != -1:
            body = part[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a ``/``-separated glob: ``*``, ``?`` and ``[...]`` stay in one segment, ``**`` spans any."""
    out: list[str] = []
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
        else:
            out.append(_segment_regex(part) + ("" if last else "/"))
    return re.compile("".join(out) + r"\Z", re.S)


def _hidden(name: str) -> bool:
    """Files a dataset reader skips: ``_SUCCESS``, ``_metadata``, ``.crc`` and other dot or underscore files."""
    return name.startswith(("_", "."))


@dataclass(frozen=True)
class Storage:
    """How to reach object storage: the ``storage`` section of ``featurelake.yaml``."""

    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_path_style: bool = False

    # --- building -----------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: StorageConfig) -> Storage:
        return cls(config.s3.endpoint, config.s3.region, config.s3.path_style)

    @classmethod
    def from_properties(cls, props: Mapping[str, Any]) -> Storage:
        """The storage that ``iceberg_properties`` (or a catalog's, or a FileIO's properties) describes."""
        endpoint = props.get(P_ENDPOINT)
        virtual = str(props.get(P_VIRTUAL, "")).lower()
        return cls(
            str(endpoint) if endpoint else None,
            str(props[P_REGION]) if props.get(P_REGION) else None,
            virtual == "false" if virtual else False,
        )

    @property
    def region(self) -> str | None:
        """The configured region, else ``AWS_REGION``/``AWS_DEFAULT_REGION``, else us-east-1 with an endpoint
        (S3-compatible servers ignore it; without one PyIceberg asks AWS where the bucket lives)."""
        found = self.s3_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return found or ("us-east-1" if self.s3_endpoint else None)

    def iceberg_properties(self) -> dict[str, str]:
        """PyIceberg FileIO properties for the warehouse (no credentials: the AWS chain supplies them)."""
        props = {P_RETRY: f"{ObjectStoreRetry.__module__}.{ObjectStoreRetry.__qualname__}"}
        if self.s3_endpoint:
            props[P_ENDPOINT] = self.s3_endpoint
        if self.region:
            props[P_REGION] = self.region
        if self.s3_path_style:
            props[P_VIRTUAL] = "false"
        elif self.s3_endpoint:
            props[P_VIRTUAL] = "true"
        return props

    def describe(self) -> str:
        """Where S3 requests go, for messages."""
        where = self.s3_endpoint or "AWS S3"
        return f"{where} ({'path-style' if self.s3_path_style else 'virtual-hosted'}, region {self.region or 'auto'})"

    # --- filesystems --------------------------------------------------------------------------------
    def filesystem(self, location: str | Path) -> tuple[pafs.FileSystem, str]:
        """A PyArrow filesystem for ``location`` and the path to give it (``bucket/key`` on S3)."""
        text = str(location)
        kind = scheme(text)
        if kind in ("", "file"):
            path = text[len("file://") :] if kind == "file" else text
            return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
        if kind == "s3":
            return _s3(self), canonical_url(text).split("://", 1)[1]
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OSError):
            fs, path = _fsspec_native(text)  # any other fsspec URL (memory://, an installed gcsfs/adlfs, ...)
            return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path

    def fsspec(self, location: str | Path) -> tuple[AbstractFileSystem, str]:
        """An fsspec filesystem for ``location`` and the path to give it: on S3 PyArrow's client (with this
        storage's settings) behind fsspec's ``ArrowFSWrapper``; other URLs through fsspec's own registry."""
        kind = scheme(location)
        if kind in ("", "file"):
            from fsspec.implementations.local import LocalFileSystem

            return LocalFileSystem(), self.filesystem(location)[1]
        if kind == "s3":
            from fsspec.implementations.arrow import ArrowFSWrapper

            fs, path = self.filesystem(location)
            return ArrowFSWrapper(fs), path
        return _fsspec_native(str(location))

    def url(self, location: str | Path, path: str) -> str:
        """The URL of ``path`` (as a filesystem for ``location`` names it) in ``location``'s scheme."""
        kind = scheme(location)
        return path if kind in ("", "file") else f"{kind}://{path}"

    # --- globbing and files -------------------------------------------------------------------------
    def glob(self, pattern: str) -> list[str]:
        """Files matching ``pattern``, sorted, as URLs: a glob (``s3://b/events/*/*.parquet``, ``**`` spans
        directories), a file, or a directory (every non-hidden file under it, e.g. hive-style
        ``dt=2026-08-01/`` partitions)."""
        fs, path = self.filesystem(pattern)
        parts = path.split("/")
        static = []
        for part in parts:
            if _has_glob(part):
                break
            static.append(part)
        base = "/".join(static)
        if len(static) == len(parts):  # no glob: one file, or everything under a directory
            info = fs.get_file_info(base)
            if info.type == pafs.FileType.File:
                return [self.url(pattern, base)]
            if info.type == pafs.FileType.NotFound:
                return []
            listed = fs.get_file_info(pafs.FileSelector(base.rstrip("/"), recursive=True))
            rel = len(base.rstrip("/")) + 1
            return sorted(
                self.url(pattern, i.path)
                for i in listed
                if i.type == pafs.FileType.File and not any(_hidden(p) for p in i.path[rel:].split("/"))
            )
        regex = glob_regex("/".join(parts[len(static) :]))
        listed = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        rel = len(base) + 1
        return sorted(
            self.url(pattern, i.path)
            for i in listed
            if i.type == pafs.FileType.File and regex.match(i.path[rel:])
        )

    def exists(self, location: str | Path) -> bool:
        fs, path = self.filesystem(location)
        return fs.get_file_info(path).type == pafs.FileType.File

    def read_bytes(self, location: str | Path) -> bytes:
        fs, path = self.filesystem(location)
        with fs.open_input_stream(path) as f:
            data: bytes = f.read()
        return data

    # Every write is whole or nothing: locally a temporary file in the target's directory renamed over it
    # (an existing file is replaced in one step, never truncated first), on object storage one PUT.
    def write_parquet(self, table: pa.Table, location: str | Path, **options: Any) -> None:
        """Write ``table`` as Parquet (whole or not at all)."""
        fs, path = self.filesystem(location)
        if is_remote(location):
            pq.write_table(table, path, filesystem=fs, **options)
            return
        write_atomic(Path(path), lambda tmp: pq.write_table(table, tmp, **options))

    def write_csv(self, table: pa.Table, location: str | Path) -> None:
        """Write ``table`` as CSV (whole or not at all)."""
        fs, path = self.filesystem(location)
        if is_remote(location):
            with fs.open_output_stream(path) as f:
                pacsv.write_csv(table, f)
            return
        write_atomic(Path(path), lambda tmp: pacsv.write_csv(table, str(tmp)))

    def write_text(self, location: str | Path, text: str) -> None:
        """Write ``text`` as UTF-8 (whole or not at all)."""
        fs, path = self.filesystem(location)
        if is_remote(location):
            with fs.open_output_stream(path) as f:
                f.write(text.encode())
            return
        write_atomic(Path(path), lambda tmp: tmp.write_bytes(text.encode()))


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Create ``path`` through ``write(tmp)`` on a temporary file beside it, then rename it into place: readers
    and a crash see the old file or the new one, never a half-written one; the temporary goes on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def same_location(a: str | Path, b: str | Path) -> bool:
    """Whether two spellings name the same file: local paths after resolving ``..``, the current directory and
    symlinks (and, when both exist, the same inode: hard links), URLs after normalising ``s3a://``."""
    if is_remote(a) or is_remote(b):
        norm = [canonical_url(str(x)).rstrip("/") for x in (a, b)]
        return norm[0] == norm[1]
    pa_, pb = (Path(str(x)[len("file://") :] if str(x).startswith("file://") else str(x)) for x in (a, b))
    try:
        if pa_.exists() and pb.exists():
            return os.path.samefile(pa_, pb)
        return pa_.expanduser().resolve() == pb.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop or an unreadable directory: compare the spellings
        return os.path.abspath(pa_) == os.path.abspath(pb)


#: errno -> what went wrong with a path the user can change (a UsageError, exit 2).
_PATH_PROBLEMS = {
    errno.ENOENT: "no such file or directory (a parent directory is missing, or the file system does not let files be created there)",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted there",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "it is a directory, not a file",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EEXIST: "something else already exists there",
    errno.ELOOP: "the path has a symbolic link loop",
    errno.EINVAL: "the name is not valid there",
}
#: errno -> what went wrong with the machine (a FeaturelakeError, exit 1: retry once it is fixed).
_MACHINE_PROBLEMS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EIO: "an input/output error",
    errno.EMFILE: "too many open files",
}


def io_failure(
    exc: BaseException, location: str | Path, what: str, *, setting: str | None = None
) -> FeaturelakeError:
    """The one error for a file operation that failed at ``location``: what was being done, the path, why (the
    system's words and errno name) and what to do.

    Object-store failures become ``StorageUnavailableError``. A problem with the path itself (missing parent
    that cannot be made, permissions, a read-only or virtual file system, a file in the way) is a
    ``UsageError`` (exit 2), or a ``ConfigError`` naming ``setting`` when the path came from the configuration;
    a full disk or an I/O error is a plain ``FeaturelakeError`` (exit 1: run the command again once fixed).
    """
    if isinstance(exc, FeaturelakeError):
        return exc
    if is_storage_failure(exc):
        return storage_error(exc, f"{what} at {location}")
    code = getattr(exc, "errno", None)
    name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    if code in _PATH_PROBLEMS:
        reason = _PATH_PROBLEMS[code]
    elif code in _MACHINE_PROBLEMS:
        reason = _MACHINE_PROBLEMS[code]
    else:
        reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:300]
    why = f"{reason} ({name})" if name else reason
    if code in _MACHINE_PROBLEMS:
        return FeaturelakeError(
            f"cannot {what} at {location}: {why}; free space (or fix the disk) and run the command again"
        )
    if setting is not None:
        env = "FEATURELAKE_" + setting.upper().replace(".", "__")
        return ConfigError(
            f"cannot {what} at {location}: {why}; set {setting} (or {env}) to a directory featurelake can create "
            "and write"
        )
    return UsageError(
        f"cannot {what} at {location}: {why}; choose a path in a directory you can "
        "write (its parent directories must exist or be creatable)"
    )


@contextmanager
def writing(location: str | Path, what: str, *, setting: str | None = None) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into :func:`io_failure`'s one clear error."""
    try:
        yield
    except OSError as exc:
        raise io_failure(exc, location, what, setting=setting) from exc


def _fsspec_native(location: str) -> tuple[AbstractFileSystem, str]:
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(location)
    except (ImportError, ValueError) as exc:
        raise UsageError(
            f"{location}: {scheme(location)}:// is not a storage featurelake can reach here ({exc}); use a local "
            "path or s3://bucket/key (docs/storage.md)"
        ) from exc
    return fs, str(path)


@lru_cache(maxsize=16)
def _s3(storage: Storage) -> pafs.S3FileSystem:
    options: dict[str, Any] = {"retry_strategy": ObjectStoreRetry()}
    if storage.s3_endpoint:
        options["endpoint_override"] = storage.s3_endpoint
    if storage.region:
        options["region"] = storage.region
    options["force_virtual_addressing"] = bool(storage.s3_endpoint) and not storage.s3_path_style
    return pafs.S3FileSystem(**options)


#: Substrings of errors from PyArrow's object-store clients (the AWS SDK's error names, curl's) that mean the
#: store failed, as opposed to a missing file or a local problem.
_STORE_FAILURES = ("AWS Error", "curlCode", "google::cloud", "Azure Error")


def is_storage_failure(exc: BaseException) -> bool:
    """An object store failed (after the client's retries): unreachable, throttling, refused credentials."""
    if isinstance(exc, StorageUnavailableError):
        return True
    if not isinstance(exc, OSError) or isinstance(exc, FileNotFoundError):
        return False
    if type(exc).__module__.split(".")[0] in ("requests", "urllib3"):
        return False  # an HTTP client's error (a REST catalog), not the object store's
    text = str(exc)
    return any(s in text for s in _STORE_FAILURES)


def storage_error(exc: BaseException, what: str) -> StorageUnavailableError:
    """A ``StorageUnavailableError`` for a failure of ``is_storage_failure``, saying what was being done."""
    if isinstance(exc, StorageUnavailableError):
        return exc
    reason = " ".join(str(exc).split())
    if len(reason) > 400:
        reason = reason[:400] + "..."
    denied = any(
        s in reason for s in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
    )
    throttled = any(s in reason for s in ("SLOW_DOWN", "SlowDown", "HTTP status 503", "THROTTLING"))
    if denied:
        hint = (
            "the store refused the credentials: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) "
            "and the bucket's permissions"
        )
    elif throttled:
        hint = (
            f"the store kept throttling (503 SlowDown) through {S3_ATTEMPTS} tries with backoff: run fewer jobs "
            "at once against the bucket, or run the command again later"
        )
    else:
        hint = (
            "check that storage.s3.endpoint (FEATURELAKE_STORAGE__S3__ENDPOINT) is reachable and the bucket "
            "exists, then run the command again"
        )
    return StorageUnavailableError(f"object storage failed while trying to {what} ({reason}); {hint}")


__all__ = [
    "S3_ATTEMPTS",
    "ObjectStoreRetry",
    "Storage",
    "glob_regex",
    "io_failure",
    "is_remote",
    "is_storage_failure",
    "same_location",
    "scheme",
    "storage_error",
    "write_atomic",
    "writing",
]
