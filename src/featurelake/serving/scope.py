"""Whose keys an online store holds: one project's views of one namespace of one catalog.

Two projects, or two namespaces of one project (``FEATURELAKE_NAMESPACE=staging``), may share one SQLite
file or one Redis. Every key and every sync watermark is therefore stored under a **scope**: a digest of
the project name, the catalog's name and location (its URI and its warehouse as the config resolves them,
any password hidden, so rotating a password keeps the scope) and the namespace. A store
reads, lists, counts, overwrites and deletes only inside its own scope. Within a scope, the sync watermark
records the table's Iceberg UUID, so a table dropped and created again under the same name is told apart
from a table of another namespace (which never shares a watermark) and gets a full resync.

Stores written before scopes existed (featurelake 0.1.0 and earlier: Redis keys ``fl:<project>:<view>:…``,
SQLite tables ``online_values`` and ``sync_watermarks``) cannot be attributed to a catalog or namespace, so
they are never read: lookups answer ``NOT_FOUND`` and say why (the server logs it, ``featurelake get``
prints it), and the first sync of each view is a full resync that then removes that view's old-layout data.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from featurelake.config import ProjectConfig

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def hide_password(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (for messages and identities).

    Deliberately not ``lakehouse.catalog.safe_uri``: lookups open the store without loading the catalog.
    """
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _label(text: str) -> str:
    """``text`` reduced to characters safe in a Redis key segment (readability only: the digest decides)."""
    return _UNSAFE.sub("_", text)[:40] or "_"


@dataclass(frozen=True)
class StoreScope:
    """One project's views of one namespace of one catalog: the unit an online store keeps apart."""

    project: str
    catalog: str
    """Catalog name (``catalog.name``)."""
    catalog_uri: str
    """Catalog URI as resolved from the config, password hidden."""
    warehouse: str
    """Warehouse location as resolved from the config, password hidden."""
    namespace: str

    @classmethod
    def of(cls, config: ProjectConfig) -> StoreScope:
        """The scope of a project's configuration (env overrides included, e.g. ``FEATURELAKE_NAMESPACE``)."""
        s = config.settings
        return cls(
            project=s.project,
            catalog=s.catalog.name,
            catalog_uri=hide_password(config.catalog_uri),
            warehouse=hide_password(config.warehouse),
            namespace=s.namespace,
        )

    @property
    def digest(self) -> str:
        """16 hex digits identifying the scope; the SQLite store keys rows by it."""
        ident = [self.project, self.catalog, self.catalog_uri, self.warehouse, self.namespace]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    @property
    def token(self) -> str:
        """``<project>.<namespace>.<digest>``, readable and free of ``:`` (a Redis key segment)."""
        return f"{_label(self.project)}.{_label(self.namespace)}.{self.digest}"

    def describe(self) -> str:
        """For messages: which project, namespace and catalog."""
        return (
            f"project {self.project!r}, namespace {self.namespace!r} of catalog {self.catalog!r} "
            f"({self.catalog_uri})"
        )


def legacy_notice(view: str, location: str) -> str:
    """What lookups and the sync say when ``view`` has data only in the layout before scopes."""
    return (
        f"the online store {location} holds keys of view {view!r} written by an earlier featurelake, which did "
        "not keep catalogs and namespaces apart; they are not served (lookups answer NOT_FOUND): run "
        f"`featurelake sync {view} --full` to rebuild them from Iceberg main (it removes the old keys)"
    )


__all__ = ["StoreScope", "hide_password", "legacy_notice"]
