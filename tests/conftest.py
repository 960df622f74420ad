"""Suite-wide policy: under `make test`, a missing tool is a failure, not a skip.

Tests that need an external tool (helm, Prometheus, the shared Proteus data) skip with a reason
when it is absent, so that a developer can run a subset anywhere. `make test` installs every
tool and sets ACCORDION_REQUIRE_TOOLS=1; then such a skip means the install is broken, and
this hook reports it as a failure instead of letting CI pass with the test unrun.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator

import pytest

_MISSING_TOOL = re.compile(
    r"not found|not installed|not available|is absent|missing", re.IGNORECASE
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (report.skipped and os.environ.get("ACCORDION_REQUIRE_TOOLS") == "1"):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    if _MISSING_TOOL.search(reason):
        report.outcome = "failed"
        report.longrepr = f"required tool missing under ACCORDION_REQUIRE_TOOLS=1: {reason}"
