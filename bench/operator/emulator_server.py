"""The test fixtures' kmock emulator in a process of its own, driven over stdin/stdout.

The benchmark runs the emulator here so that it has its own interpreter (and GIL) next to the
operator's, instead of sharing the benchmark's. One JSON request per line on stdin, one JSON
answer per line on stdout; the first line out is `{"url": ...}`. Requests:

- `{"op": "seed", "objects": [[resource, namespace, name, object], ...]}`: store objects
  directly (resourceVersion, uid, creationTimestamp and generation stamped as on create), as
  if they had been created through the API, without serving thousands of requests;
- `{"op": "log", "since": n}`: the request log (monotonic time, method, path) from entry n;
- `{"op": "stop"}`.

Times are `time.monotonic()`, comparable across processes on one Linux machine.
"""

from __future__ import annotations

import functools
import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.operator.conftest import Emulator, EmulatorThread  # noqa: E402


def seed(emu: Emulator, objects: list[list[Any]]) -> int:
    now = datetime.now(UTC).isoformat()
    for resource, namespace, name, obj in objects:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now)
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = emu._next_rv()
        key: Any = (resource, namespace, name)
        emu.objects[key] = obj
    return len(objects)


def _seed(emu: Emulator, objects: list[list[Any]]) -> int:
    return seed(emu, objects)


def _log(emu: Emulator, since: int) -> list[tuple[float, str, str]]:
    return list(emu.timed_log[since:])


def main() -> None:
    server = EmulatorThread()
    server.start()
    print(json.dumps({"url": server.url}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        op = request.get("op")
        if op == "seed":
            objects = request["objects"]
            answer: Any = {"seeded": server.call(functools.partial(_seed, objects=objects))}
        elif op == "log":
            since = int(request.get("since") or 0)
            entries = server.call(functools.partial(_log, since=since))
            answer = {"entries": entries, "size": since + len(entries)}
        elif op == "stop":
            break
        else:
            answer = {"error": f"unknown op {op!r}"}
        print(json.dumps(answer), flush=True)
    server.stop()


if __name__ == "__main__":
    main()
