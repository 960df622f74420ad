"""Where a worker's model comes from: KServe's `storageUri` schemes, and what each needs in a pod.

A KServe user writes `storageUri: s3://bucket/models/resnet50.pt` and expects it to work. This
module reads such a URI into a `StorageUri` that says how the model reaches the worker:

- `s3://BUCKET/KEY` and `http(s)://HOST/PATH`: downloaded before the worker starts, by an init
  container (`accordion-worker fetch`, `accordion.workers.fetch`) into an emptyDir mounted at
  `MODELS_DIR`; the worker reads `MODELS_DIR/<file name>`. Credentials and the endpoint of an
  S3-compatible store come from the environment, with the names KServe's storage initializer
  reads (see `accordion.workers.fetch`).
- `pvc://CLAIM/PATH`: the claim is mounted read-only at `PVC_DIR/CLAIM`; nothing is copied.
- `file:///PATH` or a plain path: a file in the image or in a volume mounted by other means.
- `builtin:NAME`: Accordion's demo models, built in code.

Anything else (`gs://`, `azureblob://`, `hdfs://`, `oci://`, ...) is refused with a message that
lists what is supported. The InferenceService API refuses the same URIs at admission (a CEL rule
and a pydantic validator on `spec.variants[].model.storageUri`); a test keeps the three in step.

Pure (no network, no boto3): the operator imports it to build worker pods without the data
plane's dependencies.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote, urlsplit

MODELS_DIR = "/mnt/models"
"""Where the init container downloads a model, as KServe's storage initializer does."""
PVC_DIR = "/mnt/pvc"
"""Where a `pvc://` claim is mounted (read-only), one directory per claim."""

SUPPORTED = (
    "s3://BUCKET/KEY, pvc://CLAIM/PATH, http(s)://HOST/PATH, file:///PATH, a path, builtin:NAME"
)

_BUCKET = "[a-z0-9][-a-z0-9.]{1,61}[a-z0-9]"
_CLAIM = "[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_FILE = "/[^ ]*[^/ ]"  # a path that names a file: no spaces, not ending in '/'
STORAGE_URI_PATTERN = (
    f"^(builtin:[^/ ]+|(file://)?{_FILE}|[^/: ][^: ]*[^/ ]|s3://{_BUCKET}{_FILE}"
    f"|pvc://{_CLAIM}{_FILE}|https?://[^/ ]+{_FILE})$"
)
"""Every storage URI the data plane serves from, as one regular expression in the syntax RE2
(CEL's `matches`) and Python share: the API checks it at admission (CEL) and in its models."""
STORAGE_URI_MESSAGE = (
    "storageUri must name one model file as s3://BUCKET/KEY, pvc://CLAIM/PATH, "
    "http(s)://HOST/PATH, file:///PATH, a path without a scheme, or builtin:NAME "
    "(gs://, azure and other schemes are not supported)"
)

_STORAGE_URI = re.compile(STORAGE_URI_PATTERN)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class StorageKind(StrEnum):
    """How a model reaches the worker."""

    BUILTIN = "builtin"
    LOCAL = "local"
    PVC = "pvc"
    S3 = "s3"
    HTTP = "http"


_KINDS = {"s3": StorageKind.S3, "pvc": StorageKind.PVC}
_KINDS.update(http=StorageKind.HTTP, https=StorageKind.HTTP)


class StorageUriError(ValueError):
    """A storage URI this data plane cannot serve from; the message says why and what works."""


@dataclass(frozen=True)
class StorageUri:
    """A parsed storage URI. `location` is the bucket, host or claim; `path` the rest."""

    uri: str
    kind: StorageKind
    location: str = ""
    path: str = ""

    @property
    def downloaded(self) -> bool:
        """Whether an init container must fetch the model before the worker starts."""
        return self.kind in (StorageKind.S3, StorageKind.HTTP)

    @property
    def file_name(self) -> str:
        """The model file's name (the last path segment; `model` for `.` or `..`)."""
        name = posixpath.basename(self.path)
        return "model" if name in ("", ".", "..") else name

    def local_path(self) -> str:
        """Where the worker finds the model in its pod (or, for builtin, the builtin URI)."""
        if self.kind is StorageKind.BUILTIN:
            return self.uri
        if self.kind is StorageKind.LOCAL:
            return self.path
        if self.kind is StorageKind.PVC:
            return posixpath.join(PVC_DIR, self.location, self.path)
        return posixpath.join(MODELS_DIR, self.file_name)


def _refuse(uri: str, why: str) -> StorageUriError:
    return StorageUriError(f"storageUri {uri!r}: {why} (supported: {SUPPORTED})")


def _why(uri: str) -> str:
    """What is wrong with a URI that does not match `STORAGE_URI_PATTERN`, in words."""
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else ""
    known = ("builtin", "file", "s3", "pvc", "http", "https")
    if scheme and scheme not in known:
        return f"the {scheme}:// scheme is not supported"
    if not uri or any(c.isspace() for c in uri):
        return "empty, or contains whitespace"
    if uri.endswith("/"):
        return "name the model file, not a bucket, claim or directory"
    if scheme == "s3":
        return f"{urlsplit(uri).netloc!r} is not an S3 bucket name, or the URI has no key"
    if scheme == "pvc":
        return f"{urlsplit(uri).netloc!r} is not a PersistentVolumeClaim name, or no path follows"
    return "not a storage URI of a model file"


def parse_storage_uri(uri: str) -> StorageUri:
    """Read `uri`; raise `StorageUriError` for a scheme or shape that cannot be served."""
    if not _STORAGE_URI.match(uri):
        raise _refuse(uri, _why(uri))
    if uri.startswith("builtin:"):
        return StorageUri(uri, StorageKind.BUILTIN, path=uri.removeprefix("builtin:"))
    if uri.startswith("file://"):
        return StorageUri(uri, StorageKind.LOCAL, path=unquote(uri.removeprefix("file://")))
    parts = urlsplit(uri)
    path = unquote(parts.path).lstrip("/")
    kind = _KINDS.get(parts.scheme)
    if kind is None or not parts.netloc:  # no scheme: a path in the image or a mounted volume
        return StorageUri(uri, StorageKind.LOCAL, path=uri)
    return StorageUri(uri, kind, parts.netloc, path)
