"""A real S3-compatible server on loopback: moto's server mode, as a process of its own.

It enforces credentials (IAM authentication switched on after the fixture's setup), so a test
that downloads with the wrong keys is refused as a real store would refuse it. The fixture
creates a bucket, a reader whose keys the tests pass on as a storage Secret's keys, and
uploads what a test asks for.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

BUCKET = "models"
READ_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}
    ],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Store:
    """The running server: its endpoint, an admin client, and the reader's credentials."""

    endpoint: str
    admin: Any
    reader_key_id: str
    reader_secret: str

    def put(self, key: str, body: bytes) -> str:
        self.admin.put_object(Bucket=BUCKET, Key=key, Body=body)
        return f"s3://{BUCKET}/{key}"

    def secret_env(self, **overrides: str) -> dict[str, str]:
        """The keys of a storage Secret for this store, as a KServe user writes them."""
        env = {
            "AWS_ACCESS_KEY_ID": self.reader_key_id,
            "AWS_SECRET_ACCESS_KEY": self.reader_secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        env.update(overrides)
        return env


def _wait_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"moto server at {url} did not start in {timeout_s} s")


@pytest.fixture(scope="module")
def s3_store() -> Iterator[S3Store]:
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_up(endpoint, proc)
        admin_kw = {
            "endpoint_url": endpoint,
            "aws_access_key_id": "admin",
            "aws_secret_access_key": "admin",
            "region_name": "us-east-1",
        }
        iam = boto3.client("iam", **admin_kw)
        iam.create_user(UserName="model-reader")
        iam.put_user_policy(
            UserName="model-reader", PolicyName="read", PolicyDocument=json.dumps(READ_POLICY)
        )
        key = iam.create_access_key(UserName="model-reader")["AccessKey"]
        admin = boto3.client("s3", **admin_kw)
        admin.create_bucket(Bucket=BUCKET)
        store = S3Store(endpoint, admin, key["AccessKeyId"], key["SecretAccessKey"])
        # From here on, every request must be signed with a known user's keys. The admin's
        # uploads need keys too, so it signs as the first IAM user with full rights.
        root = iam.create_user(UserName="uploader")["User"]["UserName"]
        iam.put_user_policy(
            UserName=root,
            PolicyName="all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        up = iam.create_access_key(UserName=root)["AccessKey"]
        store.admin = boto3.client(
            "s3",
            **{
                **admin_kw,
                "aws_access_key_id": up["AccessKeyId"],
                "aws_secret_access_key": up["SecretAccessKey"],
            },
        )
        urllib.request.urlopen(
            urllib.request.Request(
                f"{endpoint}/moto-api/reset-auth",
                data=b"0",
                method="POST",
                headers={"Content-Type": "text/plain"},
            ),
            timeout=5,
        ).close()
        yield store
    finally:
        proc.terminate()
        proc.wait(timeout=10)
