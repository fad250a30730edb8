"""The JVM jars the Spark engine puts on ``spark.jars``: the Iceberg runtime, its relocated Jackson and
httpclient5, JDBC drivers, and Hadoop's S3A filesystem with the AWS SDK it needs.

Where Maven is reachable a project can name ``spark.jars.packages`` coordinates instead (see docs/spark.md).
Offline, the Iceberg 1.10.2 Spark runtime comes from the PyPI wheel ``snowpark-connect-deps-iceberg``. That
jar lacks the relocated Jackson it links against (``org.apache.iceberg.shaded.com.fasterxml.jackson``), so
the first ``CREATE TABLE`` fails with ``NoClassDefFoundError ... JsonFactoryBuilder``. :func:`build_jackson_jar`
makes it from the Jackson jars pyspark already ships, relocated with Debian's jarjar, at install time
(``scripts/setup-spark.sh`` runs ``python -m featurelake.engines.spark_jars``); it is never committed.

Its REST catalog client links against a relocated Apache httpclient5 the jar lacks as well:
:func:`build_httpclient_jar` relocates Debian's httpclient5/httpcore5 5.2 jars the same way, plus an empty
``TlsSocketStrategy`` interface (a 5.4 type the client names only when ``rest.client.tls.configurer-impl`` is
set, but the JVM's verifier loads it with the class; that option is not supported with these jars).

``s3a://`` (and ``s3://`` tables) need ``hadoop-aws`` and the AWS SDK v1 bundle it was built against. Offline
they come from the PyPI sdist ``sagemaker-pyspark==1.4.5`` (``hadoop-aws-3.3.1`` and
``aws-java-sdk-bundle-1.11.901``; pyspark 3.5's Hadoop client is 3.3.4, and the 3.3.1 S3A filesystem runs on it:
tests/test_spark_s3.py), unpacked by ``scripts/setup-spark.sh`` into :func:`jars_dir`.

Run as a module it builds the jar if needed and prints the jars it found, one per line.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from featurelake.errors import ConfigError

ICEBERG_VERSION = "1.10.2"
RUNTIME_JAR = f"iceberg-spark-runtime-3.5_2.12-{ICEBERG_VERSION}.jar"
RUNTIME_PACKAGE = f"org.apache.iceberg:iceberg-spark-runtime-3.5_2.12:{ICEBERG_VERSION}"
JACKSON_JAR = "iceberg-shaded-jackson.jar"
JACKSON_PARTS = ("jackson-core", "jackson-databind", "jackson-annotations")
JARJAR = Path("/usr/share/java/jarjar.jar")
HTTPCLIENT_JAR = "iceberg-shaded-httpclient5.jar"
#: Debian's libhttpclient5-java and libhttpcore5-java.
HTTPCLIENT_SOURCES = tuple(
    Path("/usr/share/java") / f for f in ("httpclient5.jar", "httpcore5.jar", "httpcore5-h2.jar")
)
#: Interfaces newer than Debian's httpclient5 that Iceberg's HTTPClient names (see the module docstring).
HTTPCLIENT_STUBS = ("org/apache/hc/client5/http/ssl/TlsSocketStrategy",)
#: Hadoop's S3A filesystem and the AWS SDK it links against (from the sagemaker-pyspark sdist).
S3_JARS = ("hadoop-aws-3.3.1.jar", "aws-java-sdk-bundle-1.11.901.jar")
S3_SDIST = "sagemaker-pyspark==1.4.5"
SQLITE_JDBC = Path("/usr/share/java/sqlite-jdbc.jar")
POSTGRES_JDBC = Path("/usr/share/java/postgresql.jar")
SETUP_HINT = "run scripts/setup-spark.sh (or `make spark`)"


def jars_dir() -> Path:
    """Where install-time jars live: inside the Python environment, so each virtualenv has its own."""
    override = os.environ.get("FEATURELAKE_SPARK_JARS_DIR")
    return Path(override) if override else Path(sys.prefix) / "share" / "featurelake" / "spark-jars"


def runtime_jar() -> Path | None:
    """The Iceberg Spark runtime jar shipped by the ``snowpark-connect-deps-iceberg`` wheel, if installed."""
    try:
        import snowpark_connect_deps_iceberg as deps
    except ImportError:
        return None
    path = Path(deps.__file__).parent / "jars" / RUNTIME_JAR
    return path if path.is_file() else None


def _pyspark_jars() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def _relocate(
    dest: Path,
    sources: list[Path],
    package: str,
    *,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Merge ``sources`` (classes and service files only), add ``extra`` entries, and relocate ``package``
    (dotted) under ``org.apache.iceberg.shaded`` with Debian's jarjar into ``dest``."""
    java = shutil.which("java")
    if java is None:
        raise ConfigError(f"cannot build {dest.name}: no `java` on PATH; install a JDK 17 ({SETUP_HINT})")
    if not JARJAR.is_file():
        raise ConfigError(
            f"cannot build {dest.name}: {JARJAR} is missing; apt-get install libjarjar-java ({SETUP_HINT})"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="featurelake-relocate-") as tmp:
        merged = Path(tmp) / "merged.jar"
        seen: set[str] = set()
        with zipfile.ZipFile(merged, "w", zipfile.ZIP_DEFLATED) as out:
            for name, data in (extra or {}).items():
                seen.add(name)
                out.writestr(name, data)
            for src in sources:
                with zipfile.ZipFile(src) as jar:
                    for info in jar.infolist():
                        name = info.filename
                        # Only classes and service files: manifests, signatures and module-info of several jars
                        # would clash, and the module descriptors name the unrelocated packages.
                        if name in seen or name.endswith("/") or "module-info" in name:
                            continue
                        if name.startswith("META-INF/") and not name.startswith("META-INF/services/"):
                            continue
                        seen.add(name)
                        out.writestr(name, jar.read(name))
        rules = Path(tmp) / "rules.txt"
        rules.write_text(f"rule {package}.** org.apache.iceberg.shaded.{package}.@1\n")
        partial = dest.with_suffix(".jar.part")
        proc = subprocess.run(
            [java, "-jar", str(JARJAR), "process", str(rules), str(merged), str(partial)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not partial.is_file():
            raise ConfigError(f"jarjar failed to build {dest.name}: {(proc.stderr or proc.stdout).strip()}")
        partial.replace(dest)
    return dest


def build_jackson_jar(dest: Path | None = None, *, force: bool = False) -> Path:
    """Merge pyspark's Jackson jars and relocate them under Iceberg's shaded package; returns the jar path.

    Raises ConfigError naming the missing piece (java, jarjar, pyspark's Jackson) when it cannot be built.
    """
    dest = dest or jars_dir() / JACKSON_JAR
    if dest.is_file() and not force:
        return dest
    sources: list[Path] = []
    for part in JACKSON_PARTS:
        found = sorted(_pyspark_jars().glob(f"{part}-2.*.jar"))
        if not found:
            raise ConfigError(f"cannot build {dest.name}: pyspark ships no {part} jar; reinstall pyspark 3.5")
        sources.append(found[-1])
    return _relocate(dest, sources, "com.fasterxml.jackson")


def interface_class(name: str) -> bytes:
    """The class file of an empty public interface ``name`` (``a/b/C``), Java 8 format."""

    def utf8(text: str) -> bytes:
        raw = text.encode()
        return b"\x01" + struct.pack(">H", len(raw)) + raw

    pool = [b"\x07\x00\x02", utf8(name), b"\x07\x00\x04", utf8("java/lang/Object")]
    return b"".join(
        [
            struct.pack(">IHHH", 0xCAFEBABE, 0, 52, len(pool) + 1),
            *pool,
            struct.pack(">HHHHHHH", 0x0601, 1, 3, 0, 0, 0, 0),  # public abstract interface; no members
        ]
    )


def build_httpclient_jar(dest: Path | None = None, *, force: bool = False) -> Path:
    """Debian's httpclient5/httpcore5 relocated under Iceberg's shaded package (for its REST catalog client).

    Raises ConfigError naming what is missing (the Debian packages, java, jarjar) when it cannot be built.
    """
    dest = dest or jars_dir() / HTTPCLIENT_JAR
    if dest.is_file() and not force:
        return dest
    missing = [p for p in HTTPCLIENT_SOURCES if not p.is_file()]
    if missing:
        raise ConfigError(
            f"cannot build {dest.name}: {', '.join(map(str, missing))} missing; apt-get install "
            f"libhttpclient5-java libhttpcore5-java ({SETUP_HINT})"
        )
    stubs = {f"{name}.class": interface_class(name) for name in HTTPCLIENT_STUBS}
    return _relocate(dest, list(HTTPCLIENT_SOURCES), "org.apache.hc", extra=stubs)


def jackson_jar(*, build: bool = True) -> Path | None:
    """The relocated-Jackson jar, building it (about a second) when missing and ``build`` is set."""
    path = jars_dir() / JACKSON_JAR
    if path.is_file():
        return path
    return build_jackson_jar(path) if build else None


def httpclient_jar(*, build: bool = True) -> Path | None:
    """The relocated-httpclient5 jar (Iceberg's REST client needs it), built when missing and possible."""
    path = jars_dir() / HTTPCLIENT_JAR
    if path.is_file():
        return path
    if not build or not all(p.is_file() for p in HTTPCLIENT_SOURCES):
        return None
    return build_httpclient_jar(path)


def s3_jars() -> list[Path] | None:
    """``hadoop-aws`` and the AWS SDK bundle, when ``scripts/setup-spark.sh`` installed both; else None."""
    found = [jars_dir() / name for name in S3_JARS]
    return found if all(p.is_file() for p in found) else None


def jdbc_jars() -> list[Path]:
    """Debian's SQLite and PostgreSQL JDBC drivers, those that are installed."""
    return [p for p in (SQLITE_JDBC, POSTGRES_JDBC) if p.is_file()]


def main() -> int:
    """Build the relocated-Jackson jar if needed and print every jar the Spark engine will use."""
    runtime = runtime_jar()
    if runtime is None:
        print(
            f"error: {RUNTIME_JAR} not found: pip install --no-deps snowpark-connect-deps-iceberg==1.0.3",
            file=sys.stderr,
        )
        return 1
    force = "--force" in sys.argv[1:]
    try:
        built = [build_jackson_jar(force=force), build_httpclient_jar(force=force)]
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    s3 = s3_jars()
    if s3 is None:
        print(
            f"error: {' and '.join(S3_JARS)} not found in {jars_dir()}: scripts/setup-spark.sh unpacks them "
            f"from the {S3_SDIST} sdist",
            file=sys.stderr,
        )
        return 1
    for jar in (runtime, *built, *s3, *jdbc_jars()):
        print(jar)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
