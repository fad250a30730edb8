"""The process-wide SparkContext the Spark engine runs on, and how the project's catalog is registered in it.

One SparkContext per process (a JVM; starting one costs seconds): :func:`spark_session` starts it on first
use with the jars, Iceberg's SQL extensions and UTC, and refuses a second master. Engines then open their
own ``newSession()`` with :func:`jdbc_catalog_conf` applied, so projects with different catalogs share the
JVM. :func:`translate_commit_errors` turns Java-side commit failures into the exceptions the WAP job retries.

The catalog is the project's own: Iceberg's ``JdbcCatalog`` on the SQL catalog's database
(:func:`jdbc_catalog_conf`) or Iceberg's ``RESTCatalog`` on the same REST server (:func:`rest_catalog_conf`).
Object storage is Hadoop's S3A filesystem for ``s3a://`` and ``s3://`` alike (:func:`s3a_conf`), set from the
``storage.s3`` section; credentials come from the AWS default chain in each JVM (driver and executors), never
from Spark's configuration.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyiceberg.exceptions import CommitFailedException
from sqlalchemy.engine import make_url

from featurelake.config import SparkConfig
from featurelake.engines import spark_jars
from featurelake.errors import CatalogUnavailableError, ConfigError
from featurelake.lakehouse.storage import Storage

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ICEBERG_EXTENSIONS = "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"
#: Spark's default redaction pattern plus REST catalog credentials: matching settings are masked in the UI,
#: the event log and the driver's logs.
REDACTION_REGEX = "(?i)secret|password|token|access[.]key|credential"
S3A_FILESYSTEM = "org.apache.hadoop.fs.s3a.S3AFileSystem"
#: The AWS SDK's default chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, Java system
#: properties, web identity, AWS_PROFILE and the shared files, container and instance roles.
AWS_DEFAULT_CHAIN = "com.amazonaws.auth.DefaultAWSCredentialsProviderChain"
#: catalog.properties keys that are PyIceberg's own (its FileIO, its REST client's Python options); the rest go
#: to Iceberg's Java REST client, whose property names are the same (credential, token, scope, header.*, ...).
_PYTHON_ONLY_PROPERTIES = ("s3.", "py-", "gcs.", "adls.", "hf.", "pyarrow.")

_lock = threading.RLock()
_root: SparkSession | None = None
_root_master: str | None = None


# --- the process-wide SparkContext ---------------------------------------------------------------------


def _is_local(master: str) -> bool:
    return master.startswith("local") or master.startswith(("spark://127.", "spark://localhost"))


def _static_conf(settings: SparkConfig) -> dict[str, str]:
    """Session-start settings: jars, extensions, UTC, loopback driver for local masters; user conf wins."""
    user = dict(settings.conf)
    packages = user.get("spark.jars.packages", "")
    jars: list[str] = []
    if "iceberg-spark-runtime" not in packages:
        runtime = spark_jars.runtime_jar()
        if runtime is None:
            raise ConfigError(
                "the Spark engine needs the Iceberg Spark runtime: run scripts/setup-spark.sh (installs it from "
                "the snowpark-connect-deps-iceberg wheel), or where Maven is reachable set engine.spark.conf "
                f"spark.jars.packages: {spark_jars.RUNTIME_PACKAGE}"
            )
        jars += [str(runtime), str(spark_jars.jackson_jar())]
        httpclient = spark_jars.httpclient_jar()
        if httpclient is not None:  # the REST catalog client's; JDBC catalogs run without it
            jars.append(str(httpclient))
    s3 = [str(p) for p in spark_jars.s3_jars() or []]
    in_process = settings.master.startswith("local")
    if not in_process:  # executors in other JVMs fetch them from the driver
        jars += s3
    jars += [str(p) for p in spark_jars.jdbc_jars()]
    if user.get("spark.jars"):
        jars += [j for j in user["spark.jars"].split(",") if j]
    extensions = [e for e in user.get("spark.sql.extensions", "").split(",") if e]
    if ICEBERG_EXTENSIONS not in extensions:
        extensions.insert(0, ICEBERG_EXTENSIONS)
    conf = {
        "spark.app.name": "featurelake",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": "ERROR",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.redaction.regex": REDACTION_REGEX,
    }
    if _is_local(settings.master):
        # Tiny shuffles on one machine; a cluster keeps Spark's defaults (adaptive execution coalesces them).
        conf.update(
            {
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.sql.shuffle.partitions": str(max(2, (os.cpu_count() or 2))),
            }
        )
    conf.update(user)
    if in_process and s3:
        # local[N]: executors share the driver's JVM, and jars on spark.jars would be copied into its temp
        # directory (the AWS SDK bundle is 192 MB); on the launch classpath they are read where they are.
        classpath = [*s3, *[c for c in user.get("spark.driver.extraClassPath", "").split(os.pathsep) if c]]
        conf["spark.driver.extraClassPath"] = os.pathsep.join(dict.fromkeys(classpath))
    conf["spark.jars"] = ",".join(dict.fromkeys(jars))
    conf["spark.sql.extensions"] = ",".join(extensions)
    # Feature timestamps are instants: every engine and session computes them in UTC.
    conf["spark.sql.session.timeZone"] = "UTC"
    return conf


def spark_session(settings: SparkConfig) -> SparkSession:
    """The process's root SparkSession for ``settings.master``, started on first use."""
    global _root, _root_master
    with _lock:
        if _root is not None and _root.sparkContext._jsc is not None:
            if settings.master != _root_master:
                raise ConfigError(
                    f"a Spark session with master {_root_master!r} is already running in this process; "
                    f"engine.spark.master {settings.master!r} needs a new process"
                )
            return _root
        try:
            from pyspark.sql import SparkSession
        except ImportError as exc:  # pragma: no cover - load_engine reports the missing extra first
            raise ConfigError("pyspark is not installed: pip install 'featurelake[spark]'") from exc
        conf = _static_conf(settings)
        if _is_local(settings.master):
            # Read by the JVM launcher: keeps Spark off the public interface and quiet about it.
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = SparkSession.builder.master(settings.master)
        for key, value in conf.items():
            builder = builder.config(key, value)
        try:
            session = builder.getOrCreate()
        except Exception as exc:
            raise ConfigError(
                f"Spark could not start with master {settings.master!r}: {first_line(exc)}; check that a JDK 17 "
                "is installed (`java -version`) and the master is reachable (scripts/setup-spark.sh installs one)"
            ) from exc
        active = session.conf.get("spark.sql.extensions", "") or ""
        if ICEBERG_EXTENSIONS not in active:
            raise ConfigError(
                "a SparkSession without Iceberg's extensions is already running in this process; start it with "
                f"spark.sql.extensions={ICEBERG_EXTENSIONS} or let featurelake start Spark"
            )
        python_for_workers(session.sparkContext)
        _root, _root_master = session, settings.master
        return session


def python_for_workers(sc: Any) -> None:
    """Run Python workers with ``spark.pyspark.python`` (featurelake sets it to the driver's interpreter).

    pyspark ignores that setting in a SparkContext started from Python (only spark-submit reads it) and
    sends ``$PYSPARK_PYTHON`` or ``python3`` with every Python function: an interpreter without featurelake
    and the model's libraries. Executors start whatever the function names, so it is set when the context
    starts. On a cluster, set ``spark.pyspark.python`` to the executors' interpreter.
    """
    wanted = sc.getConf().get("spark.pyspark.python")
    if wanted and sc.pythonExec != wanted:
        sc.pythonExec = wanted


def stop_spark() -> None:
    """Stop the process's SparkContext (engines started later start a new one)."""
    global _root, _root_master
    with _lock:
        if _root is not None:
            _root.stop()
        _root, _root_master = None, None


atexit.register(stop_spark)


# --- catalog mapping -------------------------------------------------------------------------------------


def jdbc_catalog_conf(name: str, uri: str, warehouse: str, lock_timeout: float) -> dict[str, str]:
    """Spark SQL settings that register the PyIceberg SQL catalog at ``uri`` as Iceberg JdbcCatalog ``name``.

    The names must match: JdbcCatalog keys every row of the catalog database by its Spark catalog name.
    """
    url = make_url(uri)
    backend = url.get_backend_name()
    prefix = f"spark.sql.catalog.{name}"
    conf = {
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.type": "jdbc",
        f"{prefix}.warehouse": warehouse,
        # PyIceberg creates the catalog tables (with the V1 iceberg_type column) when the project opens.
        # Iceberg's own "create if missing" step leaves a metadata ResultSet open; on SQLite that pins the
        # pooled connection to a stale WAL snapshot, and Spark would never see PyIceberg's later commits.
        f"{prefix}.jdbc.init-catalog-tables": "false",
        f"{prefix}.jdbc.schema-version": "V1",
        # PyIceberg commits to the same tables from this process: never act on a cached, stale table.
        f"{prefix}.cache-enabled": "false",
    }
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ConfigError("catalog.uri: the Spark engine needs an on-disk SQLite catalog, not :memory:")
        conf[f"{prefix}.uri"] = f"jdbc:sqlite:{Path(url.database).resolve()}"
        conf[f"{prefix}.jdbc.journal_mode"] = "WAL"  # without it Spark's commits fail with SQLITE_BUSY
        conf[f"{prefix}.jdbc.busy_timeout"] = str(int(lock_timeout * 1000))
    elif backend == "postgresql":
        host = url.host or "localhost"
        conf[f"{prefix}.uri"] = f"jdbc:postgresql://{host}:{url.port or 5432}/{url.database or ''}"
        if url.username:
            conf[f"{prefix}.jdbc.user"] = url.username
        if url.password:
            conf[f"{prefix}.jdbc.password"] = str(url.password)
        for key, value in url.query.items():
            conf[f"{prefix}.jdbc.{key}"] = value if isinstance(value, str) else value[-1]
    else:
        raise ConfigError(
            f"catalog.uri with backend {backend!r} cannot be shared with Spark: use sqlite:/// or postgresql://"
        )
    return conf


def rest_catalog_conf(name: str, uri: str, warehouse: str, properties: dict[str, str]) -> dict[str, str]:
    """Spark SQL settings that register the REST catalog at ``uri`` as Iceberg RESTCatalog ``name``.

    ``properties`` are ``catalog.properties`` with secrets resolved: Iceberg's Java client reads the same names
    as PyIceberg's (``credential``, ``token``, ``scope``, ``oauth2-server-uri``, ``header.*``, ...); PyIceberg's
    own (``s3.*``, ``py-*``) are left out. Secret ones live in this process's memory only and are masked by
    ``spark.redaction.regex`` wherever Spark shows settings.
    """
    prefix = f"spark.sql.catalog.{name}"
    conf = {
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.type": "rest",
        f"{prefix}.uri": uri,
        f"{prefix}.warehouse": warehouse,
        # PyIceberg commits to the same tables from this process: never act on a cached, stale table.
        f"{prefix}.cache-enabled": "false",
    }
    for key, value in properties.items():
        if key in ("uri", "warehouse", "type") or key.startswith(_PYTHON_ONLY_PROPERTIES):
            continue
        conf[f"{prefix}.{key}"] = value
    return conf


def s3a_conf(storage: Storage) -> dict[str, str]:
    """Hadoop settings for object storage as ``storage`` (the ``storage.s3`` section) describes it.

    ``s3://`` (PyIceberg writes table locations that way) and ``s3n://`` are Hadoop's S3A filesystem too, so
    both engines read each other's tables. No credentials: the AWS default chain finds them in each JVM.
    """
    conf = {
        "fs.s3a.impl": S3A_FILESYSTEM,
        "fs.s3.impl": S3A_FILESYSTEM,
        "fs.s3n.impl": S3A_FILESYSTEM,
        "fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A",
        "fs.AbstractFileSystem.s3a.impl": "org.apache.hadoop.fs.s3a.S3A",
        "fs.s3a.aws.credentials.provider": AWS_DEFAULT_CHAIN,
        "fs.s3a.path.style.access": str(storage.s3_path_style).lower(),
    }
    if storage.s3_endpoint:
        conf["fs.s3a.endpoint"] = storage.s3_endpoint
        conf["fs.s3a.connection.ssl.enabled"] = str(storage.s3_endpoint.startswith("https://")).lower()
    if storage.region:
        conf["fs.s3a.endpoint.region"] = storage.region
    return conf


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "desc", None) or exc).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


@contextlib.contextmanager
def translate_commit_errors(what: str, uri: str) -> Iterator[None]:
    """Java-side commit failures as the exceptions the WAP job already retries or reports."""
    try:
        yield
    except Exception as exc:
        text = str(exc)
        if "CommitFailedException" in text or "ValidationException" in text:
            raise CommitFailedException(f"{what}: {first_line(exc)}") from exc
        if "SQLITE_BUSY" in text or "Connection refused" in text or "PSQLException" in text:
            raise CatalogUnavailableError(
                f"catalog {uri} is unavailable while trying to {what} from Spark ({first_line(exc)}); retry "
                "when the other writer finishes, or check the database server"
            ) from exc
        raise


__all__ = [
    "ICEBERG_EXTENSIONS",
    "first_line",
    "jdbc_catalog_conf",
    "rest_catalog_conf",
    "s3a_conf",
    "spark_session",
    "stop_spark",
    "translate_commit_errors",
]


def map_in_arrow(df: Any, fn: Any, schema: Any) -> Any:
    """``df.mapInArrow(fn, schema)`` without pyspark's per-call warning.

    pyspark checks the pandas version with distutils' LooseVersion, which warns on every call (an error
    under the tests' ``filterwarnings=error``).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "distutils Version classes", DeprecationWarning)
        return df.mapInArrow(fn, schema)


def quote_ident(name: str) -> str:
    """``name`` as a Spark SQL identifier (backticks, inner backticks doubled)."""
    return "`" + name.replace("`", "``") + "`"
