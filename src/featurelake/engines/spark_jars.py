"""The JVM jars the Spark engine puts on ``spark.jars``: the Iceberg runtime, its relocated Jackson, JDBC drivers.

Where Maven is reachable a project can name ``spark.jars.packages`` coordinates instead (see docs/spark.md).
Offline, the Iceberg 1.10.2 Spark runtime comes from the PyPI wheel ``snowpark-connect-deps-iceberg``. That
jar lacks the relocated Jackson it links against (``org.apache.iceberg.shaded.com.fasterxml.jackson``), so
the first ``CREATE TABLE`` fails with ``NoClassDefFoundError ... JsonFactoryBuilder``. :func:`build_jackson_jar`
makes it from the Jackson jars pyspark already ships, relocated with Debian's jarjar, at install time
(``scripts/setup-spark.sh`` runs ``python -m featurelake.engines.spark_jars``); it is never committed.

Run as a module it builds the jar if needed and prints the jars it found, one per line.
"""

from __future__ import annotations

import os
import shutil
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


def build_jackson_jar(dest: Path | None = None, *, force: bool = False) -> Path:
    """Merge pyspark's Jackson jars and relocate them under Iceberg's shaded package; returns the jar path.

    Raises ConfigError naming the missing piece (java, jarjar, pyspark's Jackson) when it cannot be built.
    """
    dest = dest or jars_dir() / JACKSON_JAR
    if dest.is_file() and not force:
        return dest
    java = shutil.which("java")
    if java is None:
        raise ConfigError(f"cannot build {dest.name}: no `java` on PATH; install a JDK 17 ({SETUP_HINT})")
    if not JARJAR.is_file():
        raise ConfigError(
            f"cannot build {dest.name}: {JARJAR} is missing; apt-get install libjarjar-java ({SETUP_HINT})"
        )
    sources: list[Path] = []
    for part in JACKSON_PARTS:
        found = sorted(_pyspark_jars().glob(f"{part}-2.*.jar"))
        if not found:
            raise ConfigError(f"cannot build {dest.name}: pyspark ships no {part} jar; reinstall pyspark 3.5")
        sources.append(found[-1])
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="featurelake-jackson-") as tmp:
        merged = Path(tmp) / "jackson-merged.jar"
        seen: set[str] = set()
        with zipfile.ZipFile(merged, "w", zipfile.ZIP_DEFLATED) as out:
            for src in sources:
                with zipfile.ZipFile(src) as jar:
                    for info in jar.infolist():
                        name = info.filename
                        # Only classes and service files: manifests, signatures and module-info of three jars
                        # would clash, and the module descriptors name the unrelocated packages.
                        if name in seen or name.endswith("/") or "module-info" in name:
                            continue
                        if name.startswith("META-INF/") and not name.startswith("META-INF/services/"):
                            continue
                        seen.add(name)
                        out.writestr(name, jar.read(name))
        rules = Path(tmp) / "rules.txt"
        rules.write_text("rule com.fasterxml.jackson.** org.apache.iceberg.shaded.com.fasterxml.jackson.@1\n")
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


def jackson_jar(*, build: bool = True) -> Path | None:
    """The relocated-Jackson jar, building it (about a second) when missing and ``build`` is set."""
    path = jars_dir() / JACKSON_JAR
    if path.is_file():
        return path
    return build_jackson_jar(path) if build else None


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
    try:
        jackson = build_jackson_jar(force="--force" in sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for jar in (runtime, jackson, *jdbc_jars()):
        print(jar)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
