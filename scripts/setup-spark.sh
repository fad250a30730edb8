#!/usr/bin/env bash
# Install what featurelake's Spark engine (engine.type: spark) needs, offline-friendly:
#   system  a Java runtime, Debian's SQLite and PostgreSQL JDBC drivers, jarjar, and httpclient5/httpcore5
#           (needs root: apt-get)
#   python  pyspark 3.5 + sqlglot (the `spark` extra), the Iceberg 1.10.2 Spark runtime from the PyPI wheel
#           snowpark-connect-deps-iceberg (--no-deps: we only want its jars), the relocated Jackson and
#           httpclient5 jars that runtime lacks (built here from pyspark's Jackson and Debian's httpclient5),
#           and Hadoop's S3A filesystem: hadoop-aws-3.3.1 + aws-java-sdk-bundle-1.11.901 unpacked from the
#           PyPI sdist sagemaker-pyspark==1.4.5 (downloaded with pip, never installed). All of it lands in
#           $VENV/share/featurelake/spark-jars/ (never committed).
#   packages  only print the Debian packages that `system` would install (scripts/setup-system.sh uses it)
# Usage: scripts/setup-spark.sh [all|system|python|packages]   (default all; VENV defaults to .venv)
# Where Maven is reachable you can skip the runtime wheel and set engine.spark.conf
# spark.jars.packages: org.apache.iceberg:iceberg-spark-runtime-3.5_2.12:1.10.2 instead (docs/spark.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
what=${1:-all}

packages() {
  local need=()
  command -v java >/dev/null || need+=(default-jre-headless)
  [ -f /usr/share/java/sqlite-jdbc.jar ] || need+=(libxerial-sqlite-jdbc-java)
  [ -f /usr/share/java/postgresql.jar ] || need+=(libpostgresql-jdbc-java)
  [ -f /usr/share/java/jarjar.jar ] || need+=(libjarjar-java)
  [ -f /usr/share/java/httpclient5.jar ] || need+=(libhttpclient5-java)
  [ -f /usr/share/java/httpcore5.jar ] || need+=(libhttpcore5-java)
  echo "${need[*]}"
}

system() {
  local need
  read -ra need <<<"$(packages)"
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "setup-spark: missing ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
    return 1
  fi
  echo "setup-spark: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
}

python_env() {
  local py="$VENV/bin/python"
  [ -x "$py" ] || { echo "setup-spark: no virtualenv at $VENV (run make install first)" >&2; return 1; }
  "$py" -c 'import pyspark, sqlglot' 2>/dev/null || "$py" -m pip install -q "pyspark>=3.5,<3.6" "sqlglot>=25"
  "$py" -c 'import snowpark_connect_deps_iceberg' 2>/dev/null \
    || "$py" -m pip install -q --no-deps "snowpark-connect-deps-iceberg==1.0.3"
  s3_jars "$py"
  # Builds the relocated Jackson and httpclient5 jars (about a second each) and lists the jars the engine loads.
  "$py" -m featurelake.engines.spark_jars
}

# hadoop-aws and the AWS SDK bundle from the sagemaker-pyspark sdist (181 MB download, two jars kept: 193 MB).
s3_jars() {
  local py=$1 dir tmp
  dir=$("$py" -c 'from featurelake.engines.spark_jars import jars_dir; print(jars_dir())')
  [ -f "$dir/hadoop-aws-3.3.1.jar" ] && [ -f "$dir/aws-java-sdk-bundle-1.11.901.jar" ] && return 0
  mkdir -p "$dir"
  tmp=$(mktemp -d)
  "$py" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "sagemaker-pyspark==1.4.5" \
    || { rm -rf "$tmp"; echo "setup-spark: could not download sagemaker-pyspark==1.4.5" >&2; return 1; }
  tar -xzf "$tmp"/sagemaker_pyspark-1.4.5.tar.gz -C "$tmp" \
    sagemaker_pyspark-1.4.5/deps/jars/hadoop-aws-3.3.1.jar sagemaker_pyspark-1.4.5/deps/jars/aws-java-sdk-bundle-1.11.901.jar
  mv "$tmp"/sagemaker_pyspark-1.4.5/deps/jars/*.jar "$dir"/
  rm -rf "$tmp"
}

case "$what" in
  system) system ;;
  python) python_env ;;
  all) system && python_env ;;
  packages) packages ;;
  *) echo "usage: $0 [all|system|python|packages]" >&2; exit 2 ;;
esac
