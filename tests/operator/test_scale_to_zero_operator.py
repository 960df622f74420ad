"""Scale to zero and back with the real operator (`kopf run` against the emulator).

The test acts as the router (its reports, as in test_reports_operator) and as the kubelet
(readiness). A Router-sourced service with `minReplicas: 0` and a 2 s idle period: the operator
starts it with one worker, releases it after 2 s without arrivals (status `scaledToZero`, Ready
with reason ScaledToZero, the routing ConfigMap keeps a standby table so the router pod can
start), and a report with arrivals at zero replicas (what the activator sends at once) brings a
worker Deployment back; the cold start the report carries reaches `status.coldStartSeconds`.
"""

from __future__ import annotations

import time

import pytest

from .conftest import Cluster, isvc, wait_for
from .test_reports_operator import FakeRouter, operator, report_port

pytestmark = pytest.mark.timeout(120)
__all__ = ["operator", "report_port"]  # the module's fixtures: the operator with reports


def test_idle_service_goes_to_zero_and_a_report_brings_a_worker_back(
    cluster: Cluster, report_port: int
) -> None:
    ns, pool, key = "stz", "pool-stz", "stz/svc"
    cluster.create_pool(pool, 1)
    demand = {"source": "Router", "headroom": 0.0, "burst": {"policy": "Off"}}
    cluster.create(
        isvc("svc", ns, pool, 0.0, demand=demand, minReplicas=0, scaleToZeroIdleSeconds=2)
    )
    with FakeRouter(report_port, key, cluster.token(ns)) as router:

        def takes_tables() -> None:
            """The router takes each table the operator writes (and reports its version)."""
            table = cluster.routing(ns, "svc")
            if table is not None:
                router.version, router.revision = table["version"], table["revision"]

        def scaled_to_zero() -> bool:
            takes_tables()
            return not cluster.workers(ns)

        # New: active, one worker though no request came yet.
        wait_for("one worker", lambda: len(cluster.workers(ns)) == 1, timeout_s=30)
        cluster.mark_ready(ns)
        # No arrivals for 2 s: released (once the router has the final, standby, table).
        wait_for("scale to zero", scaled_to_zero, timeout_s=30)
        wait_for("status scaledToZero", lambda: cluster.status(ns, "svc").get("scaledToZero"))
        ready = cluster.conditions(ns, "svc")["Ready"]
        assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero")
        standby = cluster.routing(ns, "svc")
        assert standby is not None, "the router needs a table to start at zero"
        assert [b["weight"] for b in standby["backends"]] == [1.0]

        # A request at zero replicas: the activator's immediate report, with arrivals (and
        # the router's last measured cold start).
        router.cold_start_s = 3.25
        router.rate_qps = 4.0
        sent = time.monotonic()
        wait_for("a worker again", lambda: len(cluster.workers(ns)) == 1, timeout_s=30)
        planned_s = time.monotonic() - sent
        print(f"worker Deployment created {planned_s:.2f} s after the first report with arrivals")
        wait_for(
            "status scaledToZero false",
            lambda: cluster.status(ns, "svc").get("scaledToZero") is False,
        )
        wait_for(
            "status.coldStartSeconds",
            lambda: cluster.status(ns, "svc").get("coldStartSeconds") == 3.25,
            timeout_s=30,
        )
