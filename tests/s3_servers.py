"""Real S3 for tests: moto's standalone S3 server and a killable proxy, both on free loopback ports.

- ``MotoS3``: ``python -m moto.server`` in its own process (objects live in its memory for the session).
- ``S3Proxy``: ``tests/s3_proxy.py`` in front of it, as its own process. Killing it is S3 going down for the
  client (connections refused) while moto keeps every object; ``start()`` brings it back on the same port.
  ``slowdown=N`` answers the first N requests with ``503 SlowDown``.

Fixtures (import them into a test module, request them by name): ``moto_s3`` (one server per session) and
``s3`` (a fresh bucket on it plus the AWS environment of the standard credential chain, for one test).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
#: Credentials moto accepts; the tests pass them the way users do: AWS environment variables.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "featurelake-test",
    "AWS_SECRET_ACCESS_KEY": "featurelake-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance metadata service for credentials
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{what} did not answer on {url}")
        time.sleep(0.05)


class MotoS3:
    """moto's S3 server in its own process on 127.0.0.1."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_http(self.endpoint + "/moto-api/", self.proc, "moto_server")
        return self

    def client(self, endpoint: str | None = None) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )

    def create_bucket(self) -> str:
        name = f"fl-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class S3Proxy:
    """``tests/s3_proxy.py`` in its own process, forwarding to ``upstream`` (host:port)."""

    def __init__(self, upstream: str, *, slowdown: int = 0, log: Path | None = None) -> None:
        self.upstream = upstream
        self.slowdown = slowdown
        self.log = log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started: list[subprocess.Popen[bytes]] = []  # every process, so none outlives the test

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Proxy:
        self.kill()  # one proxy per port: a start without a kill before it replaces the running one
        args = [
            sys.executable,
            str(HERE / "s3_proxy.py"),
            "--port",
            str(self.port),
            "--upstream",
            self.upstream,
        ]
        if self.slowdown:
            args += ["--slowdown", str(self.slowdown)]
        if self.log is not None:
            args += ["--log", str(self.log)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.started.append(self.proc)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening"):
            self.kill()
            raise RuntimeError(f"s3_proxy did not start: {line!r}")
        self.slowdown = 0  # a restart forwards everything
        return self

    def kill(self) -> None:
        """SIGKILL: S3 is gone for the client (open connections reset, new ones refused)."""
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()

    def slowdowns(self) -> int:
        """How many requests were answered 503 SlowDown."""
        if self.log is None or not self.log.exists():
            return 0
        return len(self.log.read_text().splitlines())


@dataclass
class S3Bucket:
    """A fresh bucket on the session's moto server, with the AWS environment set for the test."""

    server: MotoS3
    bucket: str

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def objects(self, prefix: str = "") -> list[str]:
        """Keys of the objects under ``prefix``, sorted."""
        return self.server.keys(self.bucket, prefix)

    def put(self, key: str, data: bytes) -> None:
        self.server.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        body: bytes = self.server.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    return S3Bucket(moto_s3, moto_s3.create_bucket())


def s3_config(endpoint: str, bucket: str, *, extra: str = "") -> str:
    """featurelake.yaml of a project whose warehouse and artifacts live in ``bucket``."""
    return (
        "project: s3test\nnamespace: features\n"
        f"catalog:\n  warehouse: s3://{bucket}/warehouse\n"
        f"storage:\n  s3: {{endpoint: '{endpoint}', region: us-east-1, path_style: true}}\n"
        f"registry:\n  artifacts: s3://{bucket}/artifacts\n" + extra
    )


def env_without_aws() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
