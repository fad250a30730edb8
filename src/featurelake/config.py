"""Typed configuration: ``featurelake.yaml`` overlaid with ``FEATURELAKE_<SECTION>__<KEY>`` env vars.

Every key is optional; the defaults are the embedded single-laptop setup (SQLite catalog, local warehouse).
Relative paths resolve against the directory that holds ``featurelake.yaml``. Secrets never live in the
file: channels name the env var that holds them (``webhook_url_env``). Durations (``7d``, ``1h30m``) and sizes
(``128MB``) are parsed when the config loads (``units.Duration``, ``units.ByteSize``), so a bad one fails
there, naming its key, instead of in the middle of a job.
"""

from __future__ import annotations

import os
import re
import shlex
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Secret,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from featurelake.errors import ConfigError
from featurelake.units import ByteSize, Duration

CONFIG_FILE = "featurelake.yaml"
STATE_DIR = ".featurelake"
DEFAULT_SQL_CATALOG = "sqlite:///.featurelake/catalog.db"
#: What a namespace may be: one Iceberg identifier (it also names a directory of the warehouse).
_NAMESPACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class SecretURL(Secret[str]):
    """A URL that may carry a password (``postgresql+psycopg://fl:pw@db/f``, ``redis://:pw@cache``).

    ``repr``, ``str`` and JSON dumps show it with the password (and secret query parameters) masked;
    code that needs the real URL asks for it: ``.get_secret_value()`` (or :func:`reveal`).
    """

    def _display(self) -> str:
        return mask_url(self.get_secret_value())


def reveal(value: Secret[str] | str | None) -> str | None:
    """The real value of a secret setting (``SecretURL``, ``SecretStr``); ``None`` stays ``None``."""
    if value is None or isinstance(value, str):
        return value
    return value.get_secret_value()


def mask_url(url: str) -> str:
    """``url`` with the password of its user info and the values of secret query parameters replaced by
    ``***`` (for reprs and messages); a URL that does not parse is hidden whole."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return REDACTED
    netloc, query = parts.netloc, parts.query
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:{REDACTED}@{host}"
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_property(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if is_secret_property(k) else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _redact_mapping(values: dict[str, Any]) -> dict[str, Any]:
    """A mapping's secret-looking values (keys such as ``*.secret.key``, ``token``, ``webhook_url``) as ``***``."""
    return {
        k: (REDACTED if _secret_key(str(k)) and not _env_name_key(str(k)) else v) for k, v in values.items()
    }


def _secret_key(key: str) -> bool:
    k = key.lower()
    return is_secret_property(k) or is_secret_property(k.replace(".", "-")) or "webhook" in k


def _env_name_key(key: str) -> bool:
    """``webhook_url_env``: the name of an env var, not the secret itself."""
    return key.lower().endswith("_env")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CatalogConfig(_Section):
    type: str = "sql"
    """``sql`` (PyIceberg SQL catalog on SQLite or PostgreSQL), ``rest``, or any other type PyIceberg's
    ``load_catalog`` knows (``glue``, ``hive``, ``dynamodb``, ``bigquery``, ``in-memory``)."""
    uri: SecretURL | None = None
    """``sql``: SQLAlchemy URL (default ``sqlite:///.featurelake/catalog.db``); ``rest``: the catalog's
    http(s) URL (required); other types: what PyIceberg wants as ``uri`` (often nothing). A password in it is
    masked in every repr and dump (``ProjectConfig.catalog_uri`` has the real one)."""
    warehouse: str = ".featurelake/warehouse"
    """Where table data and metadata go: a local path or a URL (``s3://bucket/prefix``; ``s3a://`` is the same)."""
    name: str = "featurelake"
    """Catalog name; Spark's JDBC catalog must use the same one to share tables."""
    lock_timeout_seconds: float = 5.0
    """How long one catalog statement waits on a locked SQLite database before giving up."""
    retries: int = 4
    """How many times a job retries a catalog operation that failed transiently (lock, lost race)."""
    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Passed to PyIceberg as catalog properties (REST ``credential``, ``token``, ``scope``, ``header.*``, ...).
    A value may reference env vars as ``${NAME}``; secret keys (credential, token, ...) must, in the file."""

    @field_validator("type")
    @classmethod
    def _lower_type(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", value):
            raise ValueError(f"{value!r} is not a catalog type: use sql, rest, glue, hive, ...")
        return value

    @field_validator("properties")
    @classmethod
    def _stringify(cls, value: dict[str, Any]) -> dict[str, str]:
        # YAML gives booleans and numbers; PyIceberg properties are strings ("true", "30").
        return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}

    @field_serializer("properties")
    def _dump_properties(self, value: dict[str, str]) -> dict[str, str]:
        # model_dump / JSON never carry a secret property (ProjectConfig.catalog_properties has them).
        return redact_properties(value)

    @model_validator(mode="after")
    def _uri_fits_type(self) -> CatalogConfig:
        uri = reveal(self.uri) or ""
        web = urlsplit(uri).scheme in ("http", "https")
        if self.type == "rest" and not web:
            raise ValueError(
                "catalog.type rest needs catalog.uri: the http(s) URL of the REST catalog "
                "(e.g. https://catalog.example.com/api/catalog)"
            )
        if self.type == "sql" and web:
            raise ValueError(
                "catalog.uri is an http(s) URL but catalog.type is sql: set catalog.type: rest "
                "for a REST catalog (sql wants a SQLAlchemy URL such as sqlite:///... or postgresql+psycopg://...)"
            )
        return self

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            yield key, (redact_properties(value) if key == "properties" else value)


class S3Config(_Section):
    endpoint: str | None = None
    """S3-compatible endpoint URL (``http://127.0.0.1:9000`` for MinIO or moto); none: AWS's own."""
    region: str | None = None
    """Region of the buckets; none: ``AWS_REGION``/``AWS_DEFAULT_REGION``, else ``us-east-1`` with an endpoint."""
    path_style: bool = False
    """Address buckets as ``endpoint/bucket/key`` (MinIO, moto, most local servers) instead of ``bucket.endpoint``."""

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an endpoint URL: write http(s)://host[:port]")
        if parts.username or parts.password:
            raise ValueError(
                "the endpoint holds credentials: remove them; S3 credentials come from the standard AWS chain "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...)"
            )
        return value


class StorageConfig(_Section):
    s3: S3Config = Field(default_factory=S3Config)
    """Object storage on S3 or an S3-compatible server, for every file featurelake touches."""


class SparkConfig(_Section):
    master: str = "local[2]"
    """Spark master URL: ``local[N]`` on this machine, or ``spark://host:7077`` for a standalone cluster."""
    conf: dict[str, str] = Field(default_factory=dict)
    """Extra Spark settings (``spark.executor.memory``, ``spark.jars.packages``...); they win over ours.
    Secret-looking ones (``spark.hadoop.fs.s3a.secret.key``, ``*.token``) are masked in reprs and dumps."""

    @field_serializer("conf")
    def _dump_conf(self, value: dict[str, str]) -> dict[str, Any]:
        return _redact_mapping(value)

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            yield key, (_redact_mapping(value) if key == "conf" else value)


class EngineConfig(_Section):
    type: Literal["local", "spark"] = "local"
    spark: SparkConfig = Field(default_factory=SparkConfig)
    batch_rows: int = Field(default=2_000_000, ge=1)
    """A training set reads each view's feature rows about this many at a time (whole record batches) and
    keeps only each entity row's best match between parts: memory follows the part and the entity frame."""


class OnlineStoreConfig(_Section):
    type: Literal["sqlite", "redis"] = "sqlite"
    """Backend of the online store: ``sqlite`` (embedded, one file) or ``redis``."""
    path: str = ".featurelake/online.db"
    """SQLite file of the ``sqlite`` store (relative to the project directory)."""
    url: SecretURL | None = None
    """Redis URL, e.g. ``redis://127.0.0.1:6379/0`` (default when unset: that one); a password in it is masked
    in reprs and dumps."""
    connect_timeout_seconds: float = Field(default=1.0, gt=0)
    """How long connecting to Redis may take before the store counts as unavailable."""
    timeout_seconds: float = Field(default=5.0, gt=0)
    """How long one Redis command (or pipeline reply) may take before the store counts as unavailable."""
    write_chunk: int = Field(default=20_000, ge=1)
    """Keys a sync writes per pipelined round trip (and per progress-bar step)."""
    sync_batch_rows: int = Field(default=1_000_000, ge=1)
    """A sync reads the changed data files in groups of about this many rows (a file is never split) and keeps
    only the latest row per key between groups: peak memory follows the group and the number of keys."""


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    """Address ``featurelake serve`` binds (loopback unless you mean to expose it)."""
    port: int = Field(default=8666, ge=0, le=65535)
    """Port ``featurelake serve`` listens on."""
    token: SecretStr | None = None
    """Bearer token required on every endpoint but ``/healthz``; set it as FEATURELAKE_SERVER__TOKEN (never
    shown: ``.get_secret_value()`` gives it)."""
    max_entities: int = Field(default=10_000, ge=1)
    """Most entity keys one request may ask for (HTTP 413 above)."""
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body accepted (HTTP 413 above)."""
    model_refresh_seconds: float = Field(default=2.0, ge=0)
    """How often ``/predict/{model}`` re-reads which version is in Production (a promotion shows up within)."""
    workers: int | None = Field(default=None, ge=1)
    """Server processes sharing the port (``featurelake serve --workers``); none: one per core."""
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    """A connection must send a request's complete headers within this (from connect, or from the request's
    first byte after a keep-alive pause); else 408 and closed (a silent connection is just closed)."""
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    """A request's whole body must arrive within this after its headers; else 408 and closed."""
    keep_alive_seconds: float = Field(default=5.0, gt=0)
    """An idle keep-alive connection is closed after this (keep it above a load balancer's idle timeout)."""
    max_connections: int = Field(default=1000, ge=1)
    """Open connections per worker process; one more is answered 503 and closed at once."""
    max_header_bytes: int = Field(default=65_536, ge=1024)
    """Largest request line plus headers (HTTP 431 and closed above)."""


class RegistryConfig(_Section):
    uri: SecretURL = Field(default=SecretURL("sqlite:///.featurelake/registry.db"))
    """SQLAlchemy URL of the model registry: ``sqlite:///…`` or ``postgresql+psycopg://…`` (schema via Alembic);
    a password in it is masked in reprs and dumps."""
    artifacts: str = ".featurelake/artifacts"
    """Root of the content-addressed artifact store (``sha256/<digest>``): a local path or an fsspec URL."""
    release_tags_on_archive: bool = False
    """Archiving a version removes the Iceberg tags that keep its training snapshots (default: keep them)."""
    lock_timeout_seconds: float = Field(default=10.0, gt=0)
    """How long a registry statement waits on a locked SQLite database (or a PostgreSQL connection)."""
    allow_pickle: bool = True
    """Load ``pickle``-flavor models (unpickling runs code); false refuses them everywhere (use ONNX/TorchScript)."""


class PredictionConfig(_Section):
    nan_policy: Literal["fill", "fail"] = "fill"
    """Missing (null/NaN) model inputs: ``fill`` uses the model's recorded defaults (fails without one); ``fail`` refuses any."""
    batch_rows: int = Field(default=65_536, ge=1)
    """Rows scored per Arrow record batch (bounds the memory of one model call)."""
    write_rows: int = Field(default=1_000_000, ge=1)
    """Prediction rows buffered before each append to the run's audit branch."""
    max_null_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Audit limit on the share of rows whose prediction is null (the model returned NaN or inf)."""


class MonitoringConfig(_Section):
    channels: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"type": "console"}, {"type": "file", "path": ".featurelake/alerts.jsonl"}]
    )
    """Where alerts go: ``console``, ``file`` (``path``), ``slack`` (``webhook_url_env``); see docs/monitoring.md."""
    pushgateway: SecretURL | None = None
    """Prometheus Pushgateway URL (``http://127.0.0.1:9091``) batch jobs push their metrics to (credentials in
    it are masked in reprs and dumps)."""
    push_timeout_seconds: float = 3.0
    """How long a job waits on the Pushgateway before giving up (the job itself never fails on it)."""
    state: str = ".featurelake/metrics.db"
    """Local metrics state (SQLite) every job appends to; ``monitor`` evaluates rules over it."""
    state_retention: Duration = timedelta(days=8)
    """How long samples are kept in the local state (e.g. 8d); must exceed the longest rule window."""
    rules: str | None = None
    """Project alert rules (YAML) merged over the shipped defaults by rule name."""
    default_rules: bool = True
    """Start from the shipped rules (featurelake/monitoring/rules/default.yaml); false: project rules only."""
    prometheus_url: SecretURL | None = None
    """Evaluate rules by querying this Prometheus server instead of the local state (credentials masked)."""
    evaluate_after_jobs: bool = False
    """Run ``monitor`` at the end of every job (alerts fire without a scheduler; failures never fail the job)."""
    flush_interval_seconds: float = 15.0
    """How often ``serve`` appends its latency and prediction metrics to the local state (0: never)."""
    collect: tuple[Literal["online", "models"], ...] = ("online", "models")
    """Gauges ``monitor`` measures before evaluating: online store keys and sync lag, model ages."""

    @field_validator("pushgateway", "prometheus_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_serializer("channels")
    def _dump_channels(self, value: list[dict[str, Any]]) -> list[Any]:
        return [_redact_mapping(c) if isinstance(c, dict) else c for c in value]

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            yield key, (self._dump_channels(value) if key == "channels" else value)


class BackfillConfig(_Section):
    keep_published_branches: bool = False
    """Keep ``audit_<run_id>`` after a successful publish (default: remove it)."""
    publish_attempts: int = 10
    """How often a publish rebases onto a main that moved before giving up with a ConflictError."""
    empty_window: Literal["error", "warn"] = "error"
    """Verdict on a window whose query produced no rows: ``error`` refuses it (publishing would empty
    main's days for the window), ``warn`` publishes it and records a warning."""
    audit_sample_rows: int = Field(default=20_000, ge=1000)
    """Rows sampled (stratified, every row equally likely, per audit) for quantiles, histograms and drift; counts stay exact."""
    batch_days: int = Field(default=1, ge=0)
    """The local engine computes and writes a window this many days at a time (each batch reads its source from
    its own start minus the lookback), then audits and publishes the whole window as one snapshot: peak memory
    follows the largest batch, not the window. ``0``: the whole window at once (one frame in memory)."""
    batch_min_rows: int = Field(default=1_000_000, ge=0)
    """A window whose source holds at most this many rows (by its Parquet/Iceberg metadata) is computed in one
    piece, the faster way while it fits in memory; ``0``: batch every window longer than ``batch_days``."""
    batch_rows: int = Field(default=250_000, ge=0)
    """A view computed row by row (no grouping, aggregate, DISTINCT, LIMIT or subquery; no lookback or
    aggregations) reads each batch's source as a stream and computes and writes it this many source rows at a
    time: peak memory follows this budget rather than the largest day. ``0``: a whole batch at once."""


class MaintenanceConfig(_Section):
    expire_older_than: Duration = timedelta(days=7)
    """`maintain` expires snapshots older than this (e.g. 7d, 12h) unless a tag or branch keeps them."""
    retain_last: int = 1
    """`maintain` always keeps this many of the newest snapshots of each branch (main included)."""
    orphan_min_age: Duration = timedelta(days=3)
    """Unreferenced files younger than this are kept (an uncommitted backfill may own them); at least 1h."""
    compaction_target_file_size: ByteSize = Field(default=128 * 1000**2, ge=1024)
    """Compaction merges a partition's small files into files of up to this on-disk size (e.g. 128MB)."""
    compaction_min_input_files: int = 2
    """Compaction rewrites a partition only when it has at least this many small files."""
    keep_ancestry_tag_prefixes: list[str] = Field(default_factory=lambda: ["online-sync-"])
    """Tags starting with these (online-sync watermarks) also keep every snapshot from them to the branch head."""


_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,\-?#LW]+")


def _check_cron(value: str) -> str:
    fields = value.split()
    if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise ValueError(
            f"{value!r} is not a cron expression: give five fields (minute hour day month weekday), "
            "e.g. '0 3 * * 0' for Sundays at 03:00 UTC"
        )
    return value


class SchedulesConfig(_Section):
    """Cron expressions (UTC) of what ``featurelake.integrations`` schedules in Dagster and Airflow."""

    features: str = "0 1 * * *"
    """Daily: backfill the day that ended before the tick (WAP), score it, sync the online store."""
    compaction: str = "0 3 * * 0"
    """Weekly: `maintain --all --compact`."""
    expiry: str = "0 2 * * *"
    """Daily: `maintain --all --expire-older-than <maintenance.expire_older_than>`."""
    orphans: str = "0 4 * * 0"
    """Weekly: `maintain --all --remove-orphans`."""

    @field_validator("features", "compaction", "expiry", "orphans")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _check_cron(value)


class PredictionScheduleConfig(_Section):
    model: str
    """``NAME`` (its Production version when the run starts), ``NAME@1.2.0``, ``NAME@staging`` or ``NAME@alias``."""
    view: str | None = None
    """The view it scores (default: the one its registered features come from)."""


class OrchestrationConfig(_Section):
    start_date: date | None = None
    """First daily partition (``YYYY-MM-DD``) of the Dagster assets and Airflow DAG; required by
    ``definitions()`` and ``dag_from_project()`` unless they are given ``start_date=``."""
    schedules: SchedulesConfig = Field(default_factory=SchedulesConfig)
    predictions: list[PredictionScheduleConfig] | None = None
    """Models scored after each day's backfill; default (null): every registered model with a Production version."""


class FeaturesConfig(_Section):
    load_timeout: Duration = timedelta(seconds=30)
    """How long loading ``features.py`` may take (e.g. 30s, 2m; 0 = no limit); longer is a ConfigError naming
    the file and the line it was stuck at (in the main thread a SIGALRM timer interrupts it; elsewhere the
    load runs in a daemon thread that is abandoned; see docs/reliability.md)."""


class PushConfig(_Section):
    batch_rows: int = Field(default=10_000, ge=1)
    """Offline pushes (``POST /push``, ``fl.push``) publish a view's buffered rows once this many wait."""
    batch_seconds: float = Field(default=5.0, gt=0)
    """Or once a view's oldest buffered row has waited this many seconds (each micro-batch: one WAP publish)."""
    buffer: str = ".featurelake/push"
    """Directory of the write-ahead buffer: acknowledged offline rows wait here (fsynced) until published."""


class IngestConfig(_Section):
    batch_rows: int = Field(default=10_000, ge=1)
    """``featurelake ingest`` publishes a micro-batch once this many messages arrived; it also bounds the
    messages in flight (fetched, not yet acknowledged): the consumer pulls at most what the batch has room for."""
    batch_seconds: float = Field(default=5.0, gt=0)
    """Or once this many seconds passed since the batch's first message (each micro-batch: one WAP publish)."""
    poll_seconds: float = Field(default=1.0, gt=0)
    """How long one fetch waits for messages when none is there (also how soon SIGTERM is noticed when idle)."""
    online: bool = True
    """Write each published batch's latest row per key to the online store (``--no-online``: Iceberg only)."""
    on_refused: Literal["continue", "stop"] = "continue"
    """A batch the audit refuses is kept in ``<namespace>._rejected`` and acknowledged; ``stop``: exit 1
    without acknowledging it instead (the broker delivers it again to the next run)."""
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long to wait for the broker to answer before StreamUnavailableError."""
    ack_wait_seconds: float = Field(default=60.0, gt=0)
    """NATS JetStream: seconds before the server delivers an unacknowledged message again."""
    log_batches: int = Field(default=10, ge=1)
    """Append the batches' audit-log and statistics rows (spooled durably meanwhile) every this many batches,
    when the stream goes idle and when the consumer stops (1: after every batch)."""


class Settings(BaseSettings):
    """The whole configuration of one featurelake project."""

    model_config = SettingsConfigDict(
        env_prefix="FEATURELAKE_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    project: str = "featurelake"
    namespace: str = "features"
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    online_store: OnlineStoreConfig = Field(default_factory=OnlineStoreConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    backfill: BackfillConfig = Field(default_factory=BackfillConfig)
    maintenance: MaintenanceConfig = Field(default_factory=MaintenanceConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    prediction: PredictionConfig = Field(default_factory=PredictionConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    push: PushConfig = Field(default_factory=PushConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

    @field_validator("namespace")
    @classmethod
    def _namespace_is_identifier(cls, value: str) -> str:
        if not _NAMESPACE.fullmatch(value):
            shown = repr(value if len(value) <= 60 else value[:60] + "...")
            raise ValueError(
                f"{shown} is not a namespace: use letters, digits and '_' (not starting with a digit, at most "
                "128 characters), e.g. features; it names the Iceberg namespace of the tables and their directory "
                "in the warehouse"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; env vars must win over it.
        return (env_settings, init_settings)


def _env_name(loc: tuple[int | str, ...]) -> str:
    return "FEATURELAKE_" + "__".join(str(p) for p in loc).upper()


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        # A bad value may come from an env override rather than the file: name the variable then.
        env = _env_name(e["loc"])
        origin = f" (from env {env})" if env in os.environ else ""
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{where}'{origin}")
        else:
            # A unit's own ValueError (units.Duration, units.ByteSize) already says what is wrong with the value.
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"'{where}'{origin}: {msg}")
    return (
        f"invalid configuration in {source}: " + "; ".join(lines) + " (see the config reference in README.md)"
    )


# (section, key) of values that may carry credentials: allowed from env only, never from the file.
_SECRET_KEYS = (("catalog", "uri"), ("registry", "uri"), ("online_store", "url"), ("server", "token"))

#: ``${NAME}`` in a catalog property stands for the value of env var NAME; ``$$`` is a literal ``$``.
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Words that make a catalog property (or a ``header.*`` name) a secret, and substrings that do.
_SECRET_WORDS = frozenset(
    {"credential", "credentials", "token", "secret", "password", "passwd", "sas", "apikey"}
)
_SECRET_PARTS = (
    "account-key",
    "access-key",
    "api-key",
    "private-key",
    "connection-string",
    "authorization",
    "cookie",
)
#: Keys that look like credentials in storage.s3: credentials never come from the file.
_S3_CREDENTIAL_KEYS = frozenset(
    {
        "access_key",
        "access_key_id",
        "secret_key",
        "secret_access_key",
        "session_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "credentials",
        "profile",
    }
)
REDACTED = "***"


def is_secret_property(key: str) -> bool:
    """Whether a catalog property holds a credential (REST ``credential``/``token``, ``s3.secret-access-key``,
    ``header.Authorization``, ...): such values are refused in the file and redacted in every message."""
    k = key.lower()
    words = set(re.split(r"[.\-_]", k))
    return bool(words & _SECRET_WORDS) or any(part in k for part in _SECRET_PARTS)


def _switch_or_number(value: str) -> bool:
    """Booleans and numbers are settings (``token-refresh-enabled: true``), never credentials."""
    return value.strip().lower() in ("true", "false") or bool(re.fullmatch(r"-?\d+(\.\d+)?", value.strip()))


def references_env(value: str) -> bool:
    return any(m.group(1) for m in _ENV_REF.finditer(value))


def redact_properties(props: dict[str, str]) -> dict[str, str]:
    """``props`` with every secret value replaced by ``***`` (for messages, reprs and logs)."""
    return {
        k: (REDACTED if is_secret_property(k) and not _switch_or_number(str(v)) else v)
        for k, v in props.items()
    }


def redact_text(text: str, props: dict[str, str]) -> str:
    """``text`` with the value of every secret property in ``props`` replaced by ``***``."""
    for key, value in props.items():
        if is_secret_property(key) and len(value) >= 4 and not _switch_or_number(value):
            text = text.replace(value, REDACTED)
            # A bearer header's token alone, too ("Bearer abc" -> "abc").
            token = value.split(" ", 1)[-1]
            if len(token) >= 4:
                text = text.replace(token, REDACTED)
    return text


def resolve_env_refs(where: str, value: str, environ: Any = None) -> str:
    """``value`` with each ``${NAME}`` replaced by env var NAME; a ConfigError naming ``where`` if one is unset."""
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:
            return "$"
        if name not in env:
            raise ConfigError(
                f"{where} references ${{{name}}}, but the environment variable {name} is not set: export it "
                "(secrets are read from the environment only)"
            )
        return str(env[name])

    return _ENV_REF.sub(sub, value)


def _refuse_secrets_in_file(raw: dict[str, Any], path: Path) -> None:
    for section, key in _SECRET_KEYS:
        value = raw.get(section, {}).get(key) if isinstance(raw.get(section), dict) else None
        if not isinstance(value, str):
            continue
        try:
            secret = key == "token" or bool(urlsplit(value).password)
        except ValueError:  # not a URL at all: validation says so, naming the key
            continue
        if secret:
            env = _env_name((section, key))
            raise ConfigError(
                f"{path}: {section}.{key} holds a {'token' if key == 'token' else 'password'}; secrets are read "
                f"from the environment only: remove it from the file and set {env} instead"
            )
    catalog = raw.get("catalog")
    props = catalog.get("properties") if isinstance(catalog, dict) else None
    if isinstance(props, dict):
        for k, v in props.items():
            text = str(v)
            if is_secret_property(str(k)) and not _switch_or_number(text) and not references_env(text):
                raise ConfigError(
                    f"{path}: catalog.properties.{k} holds a secret; secrets are read from the environment only: "
                    f'write it as a reference, e.g. {k}: "${{FL_CATALOG_SECRET}}", and export FL_CATALOG_SECRET '
                    "(or set FEATURELAKE_CATALOG__PROPERTIES as JSON in the environment)"
                )
    storage = raw.get("storage")
    s3 = storage.get("s3") if isinstance(storage, dict) else None
    if isinstance(s3, dict):
        for k in s3:
            if str(k).lower() in _S3_CREDENTIAL_KEYS:
                raise ConfigError(
                    f"{path}: storage.s3.{k}: S3 credentials are never read from the file; remove it and use the "
                    "standard AWS chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE "
                    "or an instance role)"
                )
    monitoring = raw.get("monitoring")
    channels = monitoring.get("channels") if isinstance(monitoring, dict) else None
    for i, channel in enumerate(channels if isinstance(channels, list) else []):
        for k, v in channel.items() if isinstance(channel, dict) else ():
            if _secret_key(str(k)) and not _env_name_key(str(k)) and isinstance(v, str) and v.strip():
                raise ConfigError(
                    f"{path}: monitoring.channels[{i}].{k} holds a secret; secrets are read from the environment "
                    "only: remove it and name the env var that holds it instead (e.g. webhook_url_env: "
                    "SLACK_WEBHOOK_URL)"
                )


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, first: int) -> None:
        super().__init__(key, line, first)
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping (PyYAML would keep the last)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` overrides on purpose
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path`` (``{}`` when empty); a ConfigError naming the file when it cannot be read,
    is not UTF-8 text, is not valid YAML or writes a key twice in one mapping."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}; check that it is a readable file"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{bad} at offset {exc.start}): featurelake.yaml must be a YAML text "
            "file; was something else saved under this name? Restore it (`featurelake init DIR` writes a fresh one)"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader) or {}  # a SafeLoader subclass: no arbitrary objects
    except _DuplicateKey as exc:
        raise ConfigError(
            f"{path}: key {exc.key!r} is written twice in the same mapping (line {exc.first} and line {exc.line}); "
            "YAML keeps only one of them, so featurelake refuses the file: remove or merge one"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        raise ConfigError(
            f"{path} is not valid YAML{where}"
            + (f" ({problem})" if problem else "")
            + ": fix the syntax and retry"
        ) from None


def canonical_url(location: str) -> str:
    """``s3a://`` and ``s3n://`` (Hadoop's names) are ``s3://``; anything else is returned as is."""
    for alias in ("s3a://", "s3n://"):
        if location[: len(alias)].lower() == alias:
            return "s3://" + location[len(alias) :]
    return location


class ProjectConfig:
    """Settings plus the project directory they came from, with paths resolved against it."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings

    @classmethod
    def load(cls, project_dir: str | Path = ".") -> ProjectConfig:
        """Read ``featurelake.yaml`` in ``project_dir`` and overlay env vars; raise ConfigError when wrong."""
        root = Path(project_dir).expanduser().resolve()
        path = root / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(
                f"no {CONFIG_FILE} in {root}: run `featurelake init {shlex.quote(str(root))}` to create a project, "
                "or pass the project directory with --project"
            )
        raw = read_yaml(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of keys (project, namespace, catalog, ...)")
        _refuse_secrets_in_file(raw, path)
        try:
            settings = Settings(**raw)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc, str(path))) from exc
        return cls(root, settings)

    # --- resolved locations -------------------------------------------------------------------------
    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.root / p)

    def sqlalchemy_uri(self, uri: str) -> str:
        """Resolve a relative ``sqlite:///rel/path`` against the project root; other URLs pass through."""
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith("sqlite:////") and uri != "sqlite:///:memory:":
            return prefix + str(self.path(uri[len(prefix) :]))
        return uri

    @property
    def catalog_uri(self) -> str:
        """The catalog URI: for ``sql`` resolved against the project (default the embedded SQLite file)."""
        c = self.settings.catalog
        if c.type == "sql":
            return self.sqlalchemy_uri(reveal(c.uri) or DEFAULT_SQL_CATALOG)
        return reveal(c.uri) or ""

    @property
    def catalog_properties(self) -> dict[str, str]:
        """``catalog.properties`` with ``${NAME}`` references replaced by the env vars; ConfigError if unset."""
        return {
            k: resolve_env_refs(f"catalog.properties.{k}", v)
            for k, v in self.settings.catalog.properties.items()
            if isinstance(v, str)
        }

    @property
    def warehouse(self) -> str:
        wh = self.settings.catalog.warehouse
        if "://" in wh:
            return canonical_url(wh)
        return "file://" + str(self.path(wh))

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def definitions_file(self) -> Path:
        return self.root / "features.py"


__all__ = [
    "CONFIG_FILE",
    "REDACTED",
    "ProjectConfig",
    "SecretURL",
    "Settings",
    "canonical_url",
    "is_secret_property",
    "mask_url",
    "read_yaml",
    "redact_properties",
    "redact_text",
    "resolve_env_refs",
    "reveal",
]
