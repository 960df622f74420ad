"""kopf's peering rule as the control loop applies it (`accordion.operator.peering`), and the
driver's gate: no pass while another peer leads, a fresh listing after every change of leader."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from accordion.operator.config import OperatorConfig
from accordion.operator.handlers import Driver
from accordion.operator.peering import Leadership, leads

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


def entry(priority: int, seen_s_ago: float = 1.0, lifetime: int = 60) -> dict[str, Any]:
    return {
        "priority": priority,
        "lastseen": (NOW - timedelta(seconds=seen_s_ago)).isoformat(),
        "lifetime": lifetime,
    }


def test_alone_leads() -> None:
    assert leads({"me": entry(10)}, "me", 10, NOW).leads


def test_not_registered_yet_or_expired_does_not_lead() -> None:
    assert not leads({}, "me", 10, NOW).leads
    assert not leads(None, "me", 10, NOW).leads
    assert not leads({"me": entry(10, seen_s_ago=61)}, "me", 10, NOW).leads


def test_a_live_peer_of_higher_priority_leads() -> None:
    verdict = leads({"me": entry(10), "other": entry(100)}, "me", 10, NOW)
    assert not verdict.leads
    assert "other" in verdict.reason
    assert leads({"me": entry(100), "other": entry(10)}, "me", 100, NOW).leads


def test_a_dead_peer_of_higher_priority_does_not_count() -> None:
    assert leads({"me": entry(10), "other": entry(100, seen_s_ago=120)}, "me", 10, NOW).leads
    assert leads({"me": entry(10), "other": {"priority": 100}}, "me", 10, NOW).leads


def test_the_same_priority_pauses_both_as_kopf_does() -> None:
    status = {"a": entry(10), "b": entry(10)}
    assert not leads(status, "a", 10, NOW).leads
    assert not leads(status, "b", 10, NOW).leads


def test_leadership_needs_the_identity_kopf_uses() -> None:
    peering = SimpleNamespace(
        standalone=False, name="accordion", priority=5, mandatory=True, clusterwide=True
    )
    assert Leadership.from_settings(peering, {}) is None
    got = Leadership.from_settings(peering, {"POD_ID": "pod-1"})
    assert got == Leadership("accordion", "pod-1", 5, True, None)
    peering.standalone = True
    assert Leadership.from_settings(peering, {"POD_ID": "pod-1"}) is None


class FakeCustomApi:
    def __init__(self) -> None:
        self.status: dict[str, Any] | None = None
        self.fail: ApiException | None = None

    def get_cluster_custom_object(self, group: str, version: str, plural: str, name: str) -> Any:
        assert (group, version, plural, name) == ("kopf.dev", "v1", "clusterkopfpeerings", "p")
        if self.fail is not None:
            raise self.fail
        return {"metadata": {"name": name}, "status": self.status}


def test_missing_peering_object() -> None:
    api = FakeCustomApi()
    api.fail = ApiException(status=404)
    assert not Leadership("p", "me", 1, mandatory=True).read(api).leads
    assert Leadership("p", "me", 1, mandatory=False).read(api).leads
    api.fail = ApiException(status=500)
    with pytest.raises(ApiException):
        Leadership("p", "me", 1, mandatory=True).read(api)


def test_driver_gate_follows_the_peering_object(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeCustomApi()
    monkeypatch.setattr(k8s, "CustomObjectsApi", lambda _client: api)
    driver = Driver(config=OperatorConfig(watch_nodes=False), api_client=k8s.ApiClient())
    driver.standalone = False
    driver.leadership = Leadership("p", "me", 10, mandatory=True)
    now = datetime.now(UTC).isoformat()

    async def scenario() -> list[tuple[bool, bool]]:
        seen = []
        driver.synced = True
        api.status = {"me": {"priority": 10, "lastseen": now, "lifetime": 60}}
        seen.append((await driver.leads(), driver.synced))  # becomes leader: list again
        driver.synced = True
        seen.append((await driver.leads(), driver.synced))  # still leader: cache kept
        api.status["rival"] = {"priority": 20, "lastseen": now, "lifetime": 60}
        seen.append((await driver.leads(), driver.synced))  # demoted: forget the listing
        seen.append((driver.active(), driver.synced))
        api.fail = ApiException(status=500)
        seen.append((await driver.leads(), driver.synced))  # unreadable: do not act
        return seen

    assert asyncio.run(scenario()) == [
        (True, False),
        (True, True),
        (False, False),
        (False, False),
        (False, False),
    ]
