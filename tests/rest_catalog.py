"""A small Iceberg REST catalog server for tests: the REST spec over PyIceberg's SQL catalog.

No maintained Iceberg REST catalog installs on these machines (docs/storage.md), so the tests run this one. It
implements what PyIceberg's ``RestCatalog`` calls, with the spec's status codes and error bodies:

- ``GET /v1/config`` (with the endpoints it serves), ``POST /v1/oauth/tokens`` (client credentials);
- namespaces: list, create (409 if it exists), load, exists (HEAD), drop (409 when not empty), properties;
- tables: list, create, load, exists (HEAD), commit (requirements checked by the SQL catalog against the
  current metadata: a failed requirement or a lost race is ``409 CommitFailedException``), drop, rename,
  register.

Commits are applied by PyIceberg's ``SqlCatalog.commit_table``: only the spec's update and requirement types
parse (anything else is a 400, as on a real server). With ``--token-env NAME`` every request but
``/v1/config`` and the token endpoint needs ``Authorization: Bearer <$NAME>`` (401 otherwise);
``--credential-env NAME`` accepts ``client_id:client_secret`` from ``$NAME`` at the token endpoint.

    python tests/rest_catalog.py --port P --uri sqlite:////tmp/rest.db --warehouse s3://bucket/wh \\
        [--s3-endpoint http://127.0.0.1:9000] [--token-env T] [--credential-env C]

Table files are written by this server's FileIO (S3 credentials from its AWS environment), exactly as a REST
catalog without credential vending; clients read and write data files with their own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import parse_qs

from pydantic import ValidationError
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.rest import CreateTableRequest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC
from pyiceberg.table import CommitTableRequest, Table
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ENDPOINTS = [
    "GET /v1/{prefix}/namespaces",
    "POST /v1/{prefix}/namespaces",
    "GET /v1/{prefix}/namespaces/{namespace}",
    "HEAD /v1/{prefix}/namespaces/{namespace}",
    "DELETE /v1/{prefix}/namespaces/{namespace}",
    "POST /v1/{prefix}/namespaces/{namespace}/properties",
    "GET /v1/{prefix}/namespaces/{namespace}/tables",
    "POST /v1/{prefix}/namespaces/{namespace}/tables",
    "GET /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "HEAD /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "POST /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "DELETE /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "POST /v1/{prefix}/tables/rename",
    "POST /v1/{prefix}/namespaces/{namespace}/register",
]
SEPARATOR = "\x1f"  # the spec's namespace separator in paths


def error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def namespace_of(request: Request) -> tuple[str, ...]:
    return tuple(request.path_params["namespace"].split(SEPARATOR))


def table_result(tbl: Table) -> Response:
    body = (
        '{"metadata-location": ' + json.dumps(tbl.metadata_location) + ', "metadata": '
        + tbl.metadata.model_dump_json() + ', "config": {}}'
    )  # fmt: skip
    return Response(body, media_type="application/json")


def build_app(catalog: Catalog, *, token: str | None = None, credential: str | None = None) -> Starlette:
    """The REST routes over ``catalog`` (a SQL catalog)."""

    def authorized(request: Request) -> bool:
        return token is None or request.headers.get("authorization") == f"Bearer {token}"

    def guard(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            if not authorized(request):
                return error(401, "NotAuthorizedException", "missing or wrong bearer token")
            try:
                return await handler(request)
            except (NoSuchTableError, NoSuchNamespaceError) as exc:
                return error(404, type(exc).__name__.replace("Error", "Exception"), str(exc))
            except (TableAlreadyExistsError, NamespaceAlreadyExistsError) as exc:
                return error(409, "AlreadyExistsException", str(exc))
            except NamespaceNotEmptyError as exc:
                return error(409, "NamespaceNotEmptyException", str(exc))
            except CommitFailedException as exc:
                return error(409, "CommitFailedException", str(exc))
            except (ValidationError, ValueError) as exc:
                if "sequence number" in str(exc):  # PyIceberg's word for a snapshot built on stale metadata
                    return error(409, "CommitFailedException", str(exc))
                return error(400, "BadRequestException", str(exc).splitlines()[0])

        return wrapped

    async def config(request: Request) -> Response:
        if not authorized(request):
            return error(401, "NotAuthorizedException", "missing or wrong bearer token")
        return JSONResponse({"defaults": {}, "overrides": {}, "endpoints": ENDPOINTS})

    async def tokens(request: Request) -> Response:
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
        given = f"{form.get('client_id', '')}:{form.get('client_secret', '')}"
        if credential is None or given != credential or token is None:
            return JSONResponse(
                {"error": "invalid_client", "error_description": "unknown client credentials"},
                status_code=401,
            )
        return JSONResponse(
            {
                "access_token": token,
                "token_type": "bearer",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "expires_in": 3600,
            }
        )

    async def namespaces(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            ns = tuple(body["namespace"])
            catalog.create_namespace(ns, body.get("properties") or {})
            return JSONResponse({"namespace": list(ns), "properties": body.get("properties") or {}})
        parent = request.query_params.get("parent")
        found = catalog.list_namespaces(tuple(parent.split(SEPARATOR)) if parent else ())
        return JSONResponse({"namespaces": [list(n) for n in found]})

    async def namespace(request: Request) -> Response:
        ns = namespace_of(request)
        if request.method == "DELETE":
            catalog.drop_namespace(ns)
            return Response(status_code=204)
        props = catalog.load_namespace_properties(ns)
        if request.method == "HEAD":
            return Response(status_code=204)
        return JSONResponse({"namespace": list(ns), "properties": props})

    async def namespace_properties(request: Request) -> Response:
        body = await request.json()
        summary = catalog.update_namespace_properties(
            namespace_of(request), set(body.get("removals") or []), body.get("updates") or {}
        )
        return JSONResponse(
            {"updated": summary.updated, "removed": summary.removed, "missing": summary.missing or []}
        )

    async def tables(request: Request) -> Response:
        ns = namespace_of(request)
        if request.method == "POST":
            raw = await request.json()
            for optional in ("location", "partition-spec", "write-order"):  # clients leave out nulls
                raw.setdefault(optional, None)
            req = CreateTableRequest.model_validate(raw)
            if req.stage_create:
                return error(
                    400, "BadRequestException", "staged creates are not supported by this test server"
                )
            tbl = catalog.create_table(
                (*ns, req.name),
                schema=req.table_schema,
                location=req.location,
                partition_spec=req.partition_spec or UNPARTITIONED_PARTITION_SPEC,
                sort_order=req.write_order or UNSORTED_SORT_ORDER,
                properties=req.properties,
            )
            return table_result(tbl)
        if not catalog.namespace_exists(ns):
            raise NoSuchNamespaceError(f"Namespace does not exist: {'.'.join(ns)}")
        idents = catalog.list_tables(ns)
        return JSONResponse({"identifiers": [{"namespace": list(i[:-1]), "name": i[-1]} for i in idents]})

    async def table(request: Request) -> Response:
        ident = (*namespace_of(request), request.path_params["table"])
        if request.method == "DELETE":
            purge = request.query_params.get("purgeRequested", "false").lower() == "true"
            (catalog.purge_table if purge else catalog.drop_table)(ident)
            return Response(status_code=204)
        tbl = catalog.load_table(ident)
        if request.method == "HEAD":
            return Response(status_code=204)
        if request.method == "GET":
            return table_result(tbl)
        raw = json.loads(await request.body())
        # The spec makes `identifier` optional on this route (Iceberg's Java client leaves it out): the path names it.
        raw.setdefault("identifier", {"namespace": list(ident[:-1]), "name": ident[-1]})
        commit = CommitTableRequest.model_validate(raw)
        response = catalog.commit_table(tbl, commit.requirements, commit.updates)
        return Response(response.model_dump_json(), media_type="application/json")

    async def rename(request: Request) -> Response:
        body = await request.json()
        src, dst = body["source"], body["destination"]
        catalog.rename_table((*src["namespace"], src["name"]), (*dst["namespace"], dst["name"]))
        return Response(status_code=204)

    async def register(request: Request) -> Response:
        body = await request.json()
        tbl = catalog.register_table((*namespace_of(request), body["name"]), body["metadata-location"])
        return table_result(tbl)

    routes = [
        Route("/v1/config", config, methods=["GET"]),
        Route("/v1/oauth/tokens", tokens, methods=["POST"]),
        Route("/v1/namespaces", guard(namespaces), methods=["GET", "POST"]),
        Route("/v1/namespaces/{namespace}", guard(namespace), methods=["GET", "HEAD", "DELETE"]),
        Route("/v1/namespaces/{namespace}/properties", guard(namespace_properties), methods=["POST"]),
        Route("/v1/namespaces/{namespace}/tables", guard(tables), methods=["GET", "POST"]),
        Route(
            "/v1/namespaces/{namespace}/tables/{table}",
            guard(table),
            methods=["GET", "HEAD", "POST", "DELETE"],
        ),
        Route("/v1/tables/rename", guard(rename), methods=["POST"]),
        Route("/v1/namespaces/{namespace}/register", guard(register), methods=["POST"]),
    ]
    return Starlette(routes=routes)


class RestCatalogProcess:
    """This server in its own process on a free loopback port (kill it to take the catalog down)."""

    def __init__(
        self,
        uri: str,
        warehouse: str,
        *,
        s3_endpoint: str | None = None,
        token: str | None = None,
        credential: str | None = None,
    ) -> None:
        from tests.s3_servers import free_port

        self.port = free_port()
        self.args = [
            sys.executable,
            __file__,
            "--port",
            str(self.port),
            "--uri",
            uri,
            "--warehouse",
            warehouse,
        ]
        if s3_endpoint:
            self.args += ["--s3-endpoint", s3_endpoint]
        self.env = dict(os.environ)
        if token is not None:  # secrets travel in the environment, never on the command line
            self.env["FL_TEST_REST_TOKEN"] = token
            self.args += ["--token-env", "FL_TEST_REST_TOKEN"]
        if credential is not None:
            self.env["FL_TEST_REST_CREDENTIAL"] = credential
            self.args += ["--credential-env", "FL_TEST_REST_CREDENTIAL"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RestCatalogProcess:
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/v1/config", timeout=2):
                    return self
            except urllib.error.HTTPError:
                return self  # it answers (401 without a token)
            except OSError:
                pass
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"rest_catalog.py exited with {self.proc.returncode}: {err[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("rest_catalog.py did not answer")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uri", required=True, help="SQLAlchemy URL of the SQL catalog behind the server")
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--s3-endpoint", default=None)
    parser.add_argument(
        "--token-env", default=None, help="env var holding the bearer token clients must send"
    )
    parser.add_argument("--credential-env", default=None, help="env var holding client_id:client_secret")
    args = parser.parse_args()
    props = {"uri": args.uri, "warehouse": args.warehouse}
    if args.s3_endpoint:
        props.update(
            {
                "s3.endpoint": args.s3_endpoint,
                "s3.region": "us-east-1",
                "s3.force-virtual-addressing": "false",
            }
        )
    catalog = SqlCatalog("rest_backend", **props)
    token = os.environ[args.token_env] if args.token_env else None
    credential = os.environ[args.credential_env] if args.credential_env else None
    app = build_app(catalog, token=token, credential=credential)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
