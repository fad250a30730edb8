#!/usr/bin/env bash
# The quickstart with its lakehouse on S3: run_demo.sh unchanged, with the warehouse (every table's data and
# metadata) and the model artifacts in a bucket. Only configuration differs, through featurelake's env
# overrides; the catalog database, the source files and local outputs stay in the project directory.
#
# The one switch: S3_ENDPOINT. Unset (what `make demo-s3` does), a moto S3 server is started on a free
# loopback port for the run and stopped afterwards. Set it to use an S3-compatible server you run yourself
# (MinIO, ...), with its credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and a bucket in S3_BUCKET
# (default featurelake-demo, which must exist there).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}

MOTO_PID=""
cleanup() { if [ -n "$MOTO_PID" ]; then kill "$MOTO_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT

BUCKET=${S3_BUCKET:-featurelake-demo}
if [ -z "${S3_ENDPOINT:-}" ]; then
  PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  S3_ENDPOINT="http://127.0.0.1:$PORT"
  export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo-secret   # moto accepts any; never real keys
  $PY -m moto.server -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
  MOTO_PID=$!
  for _ in $(seq 1 200); do
    if $PY -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/moto-api/', timeout=1)" "$S3_ENDPOINT" 2>/dev/null; then break; fi
    sleep 0.1
  done
  $PY -c "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1').create_bucket(Bucket=sys.argv[2])" "$S3_ENDPOINT" "$BUCKET"
  echo "moto S3 server on $S3_ENDPOINT (pid $MOTO_PID), bucket $BUCKET"
fi
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_EC2_METADATA_DISABLED=true

PREFIX="s3://$BUCKET/quickstart-$(date -u +%Y%m%dT%H%M%S)"
export FEATURELAKE_STORAGE__S3__ENDPOINT="$S3_ENDPOINT"
export FEATURELAKE_STORAGE__S3__PATH_STYLE=true
export FEATURELAKE_CATALOG__WAREHOUSE="$PREFIX/warehouse"
export FEATURELAKE_REGISTRY__ARTIFACTS="$PREFIX/artifacts"
echo "warehouse $FEATURELAKE_CATALOG__WAREHOUSE, artifacts $FEATURELAKE_REGISTRY__ARTIFACTS"

bash ./run_demo.sh

printf '\n\033[1m== the lakehouse is in the bucket\033[0m\n'
$PY - "$S3_ENDPOINT" "$BUCKET" "${PREFIX#s3://$BUCKET/}" <<'PY'
import sys
from collections import Counter
import boto3

endpoint, bucket, prefix = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", []) if not o["Key"].endswith("/")]  # not directory markers
by_table = Counter("/".join(k.split("/")[2:4]) if "/warehouse/" in k else k.split("/")[1] for k in keys)
for name, n in sorted(by_table.items()):
    print(f"  s3://{bucket}/{prefix}/{'warehouse/' if '/' in name else ''}{name}: {n} objects")
if not any("/warehouse/features/user_features/data/" in k for k in keys):
    raise SystemExit("demo-s3 FAILED: no feature data in the bucket")
PY
