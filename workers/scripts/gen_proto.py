"""Regenerate the protobuf messages of the gRPC endpoint from their .proto (run from anywhere).

The generated modules are committed (the worker image needs no protoc): after editing
``accordion/workers/grpc_predict_v2.proto``, run ``python workers/scripts/gen_proto.py`` with
the dev tools installed (grpcio-tools, ruff). It runs protoc, marks the output as generated for
ruff and mypy (they hold hand-written code to rules generated code does not follow) and formats
it. ``tests/workers/test_grpc.py`` fails while the committed modules differ from the .proto.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WORKERS = Path(__file__).resolve().parent.parent
PROTO = "accordion/workers/grpc_predict_v2.proto"
ORIGIN = "# Generated from grpc_predict_v2.proto by workers/scripts/gen_proto.py.\n"
HEADERS = {
    ".py": "# ruff: noqa\n" + ORIGIN,
    ".pyi": '# ruff: noqa\n# mypy: disable-error-code="type-arg"\n' + ORIGIN,
}


def generate(out: Path) -> list[Path]:
    """Write grpc_predict_v2_pb2.py and .pyi under `out` (a copy of the package layout)."""
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(WORKERS),
         f"--python_out={out}", f"--pyi_out={out}", str(WORKERS / PROTO)],
        check=True,
    )  # fmt: skip
    paths = []
    for suffix, header in HEADERS.items():
        path = out / PROTO.replace(".proto", f"_pb2{suffix}")
        path.write_text(header + path.read_text())
        paths.append(path)
    subprocess.run([sys.executable, "-m", "ruff", "format", "-q", *map(str, paths)], check=True)
    return paths


if __name__ == "__main__":
    for written in generate(WORKERS):
        print(written)
