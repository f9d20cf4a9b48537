"""The cohort's Ray connection: private start and --address branches, security warnings (issue #23).

A recording stand-in for the ``ray`` module: no Ray is started (the cohort tests pre-initialise a
real one, so they never reach these branches)."""

from __future__ import annotations

import warnings

import pytest

from fewshotcx.cohort import raysession
from fewshotcx.cohort.raysession import RaySession


class FakeRay:
    def __init__(self, refuse: bool = False) -> None:
        self.inits: list[dict] = []
        self.shutdowns = 0
        self.refuse = refuse

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        if self.refuse:
            raise ConnectionError("nobody there")
        self.inits.append(kwargs)

    def shutdown(self) -> None:
        self.shutdowns += 1


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(raysession, "_WARNED", set())
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)


def _enter(ray, address=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with RaySession(ray, address, workers=2, cpus_per_worker=1):
            pass
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_private_start_is_local_without_dashboard_and_warns_once():
    ray = FakeRay()
    first, second = _enter(ray), _enter(ray)
    assert [i["address"] for i in ray.inits] == ["local", "local"] and ray.shutdowns == 2
    assert all(i["include_dashboard"] is False and i["dashboard_host"] == "127.0.0.1" and i["num_cpus"] == 2
               for i in ray.inits)
    assert len(first) == 1 and "RAY_AUTH_MODE=token" in first[0] and "Security" in first[0]
    assert second == []  # once per process


def test_joining_a_cluster_without_token_auth_warns_once_per_address(monkeypatch):
    ray = FakeRay()
    first = _enter(ray, "10.0.0.5:6379")
    assert ray.inits[0]["address"] == "10.0.0.5:6379" and ray.shutdowns == 1
    assert len(first) == 1 and "without token authentication" in first[0] and "object store" in first[0]
    assert _enter(ray, "10.0.0.5:6379") == []
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert _enter(ray, "10.0.0.6:6379") == [] and _enter(FakeRay()) == []  # token auth: no warning


def test_unreachable_cluster_is_a_one_line_value_error():
    with pytest.raises(ValueError, match="cannot join the Ray cluster at 'auto': nobody there"):
        _enter(FakeRay(refuse=True), "auto")
