"""Download a model before the worker starts: the storage initializer of a worker pod.

The operator puts `accordion-worker fetch <storageUri> --dest /mnt/models` into an init container
of every worker pod whose model lives in S3 or behind HTTP(S) (`accordion.workers.storage`);
the worker container then reads the downloaded file from the same emptyDir. A failed download
fails the init container, so the pod never starts serving without its model, and Kubernetes
retries it with backoff; the message names the URI and what went wrong.

S3 (and S3-compatible stores: MinIO, Ceph, ...) reads the environment KServe's storage
initializer reads, so a Secret written for KServe works when the operator passes it to the pod
(`envFrom`):

- `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`): credentials;
- `AWS_ENDPOINT_URL`, or `S3_ENDPOINT` (host[:port]) with `S3_USE_HTTPS` (`0` for plain HTTP):
  the endpoint of an S3-compatible store; path-style addressing unless `S3_USER_VIRTUAL_BUCKET`;
- `AWS_DEFAULT_REGION` / `AWS_REGION`: the region;
- `S3_VERIFY_SSL` (`0` turns TLS verification off) and `AWS_CA_BUNDLE` (a CA file).

boto3 does the transfer (multipart, retries); HTTP(S) uses the standard library. Every download
goes to a temporary name first and is renamed when complete, so a restarted init container
never takes a half-written file for the model.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accordion.workers.storage import MODELS_DIR, StorageKind, StorageUri, parse_storage_uri

HTTP_TIMEOUT_S = 60.0
"""Timeout of connecting to an HTTP(S) server and of each read from it."""


class FetchError(RuntimeError):
    """The model could not be downloaded; the message names the URI and the cause."""


def _false(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("0", "false", "no", "off")


def s3_endpoint(environ: Mapping[str, str]) -> str | None:
    """The endpoint URL of an S3-compatible store, from KServe's variables; None for AWS."""
    url = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if url:
        return url
    host = environ.get("S3_ENDPOINT")
    if not host:
        return None
    if "://" in host:
        return host
    return ("http://" if _false(environ.get("S3_USE_HTTPS")) else "https://") + host


def s3_client(environ: Mapping[str, str]) -> Any:
    """A boto3 S3 client configured from `environ` as KServe's storage initializer does."""
    import boto3
    from botocore.config import Config

    endpoint = s3_endpoint(environ)
    virtual = environ.get("S3_USER_VIRTUAL_BUCKET", "").lower() in ("1", "true", "yes")
    style = "virtual" if virtual or endpoint is None else "path"
    verify: bool | str = True
    if _false(environ.get("S3_VERIFY_SSL")):
        verify = False
    elif environ.get("AWS_CA_BUNDLE"):
        verify = environ["AWS_CA_BUNDLE"]
    session = boto3.session.Session(
        aws_access_key_id=environ.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=environ.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=environ.get("AWS_SESSION_TOKEN") or None,
        region_name=environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or None,
    )
    return session.client(
        "s3",
        endpoint_url=endpoint,
        verify=verify,
        config=Config(s3={"addressing_style": style}, retries={"max_attempts": 5}),
    )


def _fetch_s3(source: StorageUri, target: Path, environ: Mapping[str, str]) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(environ)
    try:
        client.download_file(source.location, source.path, str(target))
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise FetchError(f"{source.uri}: no such object{_nearby(client, source)}") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise FetchError(
                f"{source.uri}: access denied ({code}); check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY in the storage Secret"
            ) from None
        raise FetchError(f"{source.uri}: {exc}") from None
    except BotoCoreError as exc:
        raise FetchError(f"{source.uri}: {exc}") from None


def _nearby(client: Any, source: StorageUri) -> str:
    """A hint for a missing key: the objects next to it (a typo shows), if listing is allowed."""
    prefix = source.path.rsplit("/", 1)[0] + "/" if "/" in source.path else ""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        listed = client.list_objects_v2(Bucket=source.location, Prefix=prefix, MaxKeys=10)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return f" (bucket {source.location} does not exist)"
        return (
            ""  # the hint is best effort (listing may be denied); the missing object is the error
        )
    except BotoCoreError:
        return ""
    keys = [str(o["Key"]) for o in listed.get("Contents", [])]
    where = f"s3://{source.location}/{prefix}"
    return f" (objects under {where}: {', '.join(keys)})" if keys else f" (nothing under {where})"


def _fetch_http(source: StorageUri, target: Path) -> None:
    request = urllib.request.Request(source.uri, headers={"User-Agent": "accordion-worker-fetch"})
    try:
        with (
            urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp,
            target.open("wb") as out,
        ):
            shutil.copyfileobj(resp, out, length=1 << 20)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{source.uri}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{source.uri}: {reason}") from None


def fetch(
    uri: str, dest: Path | str = MODELS_DIR, environ: Mapping[str, str] | None = None
) -> Path:
    """Download the model at `uri` into `dest`; return the file the worker will read.

    URIs that need no download (a path, `pvc://`, `builtin:`) are returned as the worker's path
    without touching anything. A model already complete in `dest` is not downloaded again.
    """
    source = parse_storage_uri(uri)
    if not source.downloaded:
        return Path(source.local_path())
    env = dict(os.environ if environ is None else environ)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / source.file_name
    if final.is_file():
        return final
    partial = dest / f".{source.file_name}.partial"
    partial.unlink(missing_ok=True)
    try:
        if source.kind is StorageKind.S3:
            _fetch_s3(source, partial, env)
        else:
            _fetch_http(source, partial)
        partial.replace(final)
    finally:
        partial.unlink(missing_ok=True)
    return final
