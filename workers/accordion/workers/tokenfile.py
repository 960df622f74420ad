"""A bearer token kept in a file that someone else rotates: read again when the file changes.

Why: a router proves who it is to the operator with its pod's projected ServiceAccount token
(`accordion.workers.reporting`, audience `REPORT_AUDIENCE`). The kubelet writes that token into
a volume and replaces it before it expires (at 80% of its lifetime, by swapping a symlink), so
a token read once at start stops working after an hour. Reading the file for every report would
do too, but a `stat` per report is cheaper and says when the content changed (a new inode, size
or modification time); `forget` makes the next use read it again whatever the stat says (after
the operator refused the token).
"""

from __future__ import annotations

import os
from pathlib import Path


class TokenFile:
    """The token in `path` (surrounding whitespace stripped), re-read when the file changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""
        self.reads = 0
        """How many times the file was read (once per change)."""

    def token(self) -> str:
        """The current token; `OSError` (with the path) when the file cannot be read or is
        empty."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self._stamp:
                token = self.path.read_text().strip()
                self.reads += 1
                if not token:
                    raise OSError("the file is empty")
                self._stamp, self._token = stamp, token
        except OSError as exc:
            self._stamp = None
            raise OSError(f"cannot read token file {self.path}: {exc.strerror or exc}") from None
        return self._token

    def forget(self) -> None:
        """Read the file again at the next `token()`."""
        self._stamp = None

    def header(self) -> dict[str, str]:
        """`Authorization: Bearer <token>`."""
        return {"Authorization": f"Bearer {self.token()}"}
