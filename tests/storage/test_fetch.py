"""`accordion-worker fetch`, the worker pod's storage initializer, as a real process.

Against a real S3-compatible server on loopback (moto, credentials enforced) and a loopback
HTTP server: the model arrives byte for byte with a storage Secret's keys, in KServe's variable
names (AWS_ENDPOINT_URL, or S3_ENDPOINT with S3_USE_HTTPS); wrong or missing keys, a missing
object, an HTTP error and an unsupported scheme each fail with status 1 and a message that
names the URI and the cause, and leave no file the worker could take for the model.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import S3Store

FETCH = [sys.executable, "-m", "accordion.workers", "fetch"]
MODEL = bytes(range(256)) * 4096  # 1 MiB: more than one read of the transfer


def run_fetch(uri: str, dest: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    return subprocess.run(
        [*FETCH, uri, "--dest", str(dest)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_s3_model_arrives_with_the_secrets_keys(s3_store: S3Store, tmp_path: Path) -> None:
    uri = s3_store.put("resnet/v1/model.pt", MODEL)
    proc = run_fetch(uri, tmp_path, s3_store.secret_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "model.pt")
    assert (tmp_path / "model.pt").read_bytes() == MODEL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_kserve_style_endpoint_variables(s3_store: S3Store, tmp_path: Path) -> None:
    """S3_ENDPOINT (host:port) with S3_USE_HTTPS=0, as KServe derives them from its annotations."""
    uri = s3_store.put("kserve/model.pt", b"kserve")
    env = s3_store.secret_env()
    endpoint = env.pop("AWS_ENDPOINT_URL").removeprefix("http://")
    env.update(S3_ENDPOINT=endpoint, S3_USE_HTTPS="0", S3_VERIFY_SSL="0")
    proc = run_fetch(uri, tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model.pt").read_bytes() == b"kserve"


@pytest.mark.parametrize("secret", ["wrong", None], ids=["wrong-secret", "no-credentials"])
def test_bad_credentials_are_refused(s3_store: S3Store, tmp_path: Path, secret: str | None) -> None:
    uri = s3_store.put("private/model.pt", b"x")
    env = s3_store.secret_env()
    if secret is None:
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    else:
        env["AWS_SECRET_ACCESS_KEY"] = secret
    proc = run_fetch(uri, tmp_path, env)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {uri}: ")
    if secret is None:
        assert "credentials" in proc.stderr
    else:
        assert "access denied" in proc.stderr
        assert "AWS_SECRET_ACCESS_KEY" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_missing_object_names_its_neighbours(s3_store: S3Store, tmp_path: Path) -> None:
    s3_store.put("bert/v2/model.pt2", b"x")
    proc = run_fetch("s3://models/bert/v2/model.pt", tmp_path, s3_store.secret_env())
    assert proc.returncode == 1
    assert "no such object" in proc.stderr
    assert "bert/v2/model.pt2" in proc.stderr
    missing_bucket = run_fetch("s3://no-such-bucket/m.pt", tmp_path, s3_store.secret_env())
    assert missing_bucket.returncode == 1
    assert "bucket no-such-bucket does not exist" in missing_bucket.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_complete_download_is_not_repeated(s3_store: S3Store, tmp_path: Path) -> None:
    """A restarted init container (same emptyDir) finds the model and fetches nothing."""
    uri = s3_store.put("once/model.pt", b"first")
    assert run_fetch(uri, tmp_path, s3_store.secret_env()).returncode == 0
    s3_store.admin.delete_object(Bucket="models", Key="once/model.pt")
    again = run_fetch(uri, tmp_path, s3_store.secret_env())
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "model.pt").read_bytes() == b"first"


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_http_model_and_http_errors(http_root: tuple[str, Path], tmp_path: Path) -> None:
    url, root = http_root
    (root / "models").mkdir()
    (root / "models" / "net.pt").write_bytes(MODEL)
    dest = tmp_path / "dest"
    proc = run_fetch(f"{url}/models/net.pt", dest, {})
    assert proc.returncode == 0, proc.stderr
    assert (dest / "net.pt").read_bytes() == MODEL
    missing = run_fetch(f"{url}/models/gone.pt", tmp_path / "other", {})
    assert missing.returncode == 1
    assert "HTTP 404" in missing.stderr
    assert f"{url}/models/gone.pt" in missing.stderr
    assert list((tmp_path / "other").iterdir()) == []


def test_paths_need_no_download_and_other_schemes_are_refused(tmp_path: Path) -> None:
    local = run_fetch("file:///models/resnet50.pt", tmp_path, {})
    assert local.returncode == 0
    assert local.stdout.strip() == "/models/resnet50.pt"
    claim = run_fetch("pvc://model-store/resnet/model.pt", tmp_path, {})
    assert claim.stdout.strip() == "/mnt/pvc/model-store/resnet/model.pt"
    refused = run_fetch("gs://bucket/model.pt", tmp_path, {})
    assert refused.returncode == 1
    assert "the gs:// scheme is not supported" in refused.stderr
    assert list(tmp_path.iterdir()) == []
