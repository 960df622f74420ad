"""The leader's pod label: how the routers' reports reach the leading operator.

The routers post their reports to one Service, which must reach the leading operator only.
Kubernetes routes a Service to the ready pods its selector matches; making followers unready
did that, but it kept a Deployment of two or more operator replicas from ever being Available
(`helm install --wait` and `kubectl rollout status` never finish). So every replica is ready
while it is healthy, and the one that leads marks its own pod with the label
``accordion.dev/leader: "true"``, which the reports Service selects; a replica that stops
leading sets it to ``"false"``. The label is written when leadership changes (and on the first
pass), and written again at the next pass when a write failed.

A leader cut off from the API server cannot take its label away; its report server still
answers 503 to reports once it knows it does not lead (`reports.ReportServer`), and the routers
keep their last table until a report is answered.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

log = logging.getLogger(__name__)

LEADER_LABEL = "accordion.dev/leader"


@dataclass
class LeaderLabel:
    """This operator's own pod, whose `LEADER_LABEL` says whether it leads."""

    pod: str
    namespace: str
    written: bool | None = None
    """What the label says, as last written; None before the first write."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LeaderLabel | None:
        """From `POD_ID` and `POD_NAMESPACE` (the chart sets both from the downward API);
        None outside a pod (no label to write)."""
        env = os.environ if environ is None else environ
        pod, namespace = env.get("POD_ID"), env.get("POD_NAMESPACE")
        return cls(pod, namespace) if pod and namespace else None

    async def mark(self, api_client: Any, leading: bool) -> None:
        """Make the pod's label say `leading`; a failure is logged and tried at the next call."""
        if self.written is leading:
            return
        body = {"metadata": {"labels": {LEADER_LABEL: "true" if leading else "false"}}}
        api = k8s.CoreV1Api(api_client)
        try:
            await asyncio.to_thread(api.patch_namespaced_pod, self.pod, self.namespace, body)
        except Exception as exc:
            log.warning(
                "cannot label pod %s/%s %s=%s: %s",
                self.namespace,
                self.pod,
                LEADER_LABEL,
                leading,
                exc,
            )
            return
        log.info(
            "pod %s/%s labelled %s=%s",
            self.namespace,
            self.pod,
            LEADER_LABEL,
            "true" if leading else "false",
        )
        self.written = leading
