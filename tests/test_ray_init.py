"""Tests of clipbert/ray_init.py without starting Ray: the arguments init_ray gives ray.init (a Ray of its own, or
the cluster at an address or RAY_ADDRESS), the State API pin and Ray Data's progress bars."""

from __future__ import annotations

import os

import pytest
import ray
import ray.data

from clipbert.ray_init import STATE_API_ENV, init_ray, state_api_env

UNSET = "unset by the test"


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every ray.init call (which starts nothing); RAY_ADDRESS unset, the State API
    variable set to UNSET, both put back after the test."""
    recorded: list[dict] = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: recorded.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(STATE_API_ENV, UNSET)
    return recorded


@pytest.fixture
def data_context(monkeypatch):
    """Ray Data's context with its progress bars on, put back after the test."""
    context = ray.data.DataContext.get_current()
    monkeypatch.setattr(context, "enable_progress_bars", True)
    return context


def test_state_api_env_points_at_the_local_dashboard():
    assert state_api_env(8265) == {STATE_API_ENV: "http://127.0.0.1:8265"}


def test_without_an_address_it_starts_a_ray_of_its_own(calls):
    assert init_ray() is True
    assert calls == [{"address": "local", "ignore_reinit_error": True, "log_to_driver": True, "num_cpus": None}]
    assert os.environ[STATE_API_ENV] == UNSET


def test_local_options_reach_a_ray_started_here(calls):
    assert init_ray(None, 2, log_to_driver=False, include_dashboard=False, object_store_memory=10**8) is True
    assert calls == [{"address": "local", "ignore_reinit_error": True, "log_to_driver": False, "num_cpus": 2,
                      "include_dashboard": False, "object_store_memory": 10**8}]


def test_a_dashboard_port_opens_the_dashboard_and_pins_the_state_api(calls):
    assert init_ray("local", 1, dashboard_port=8301) is True
    assert calls == [{"address": "local", "ignore_reinit_error": True, "log_to_driver": True, "num_cpus": 1,
                      "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": 8301}]
    assert os.environ[STATE_API_ENV] == "http://127.0.0.1:8301"


@pytest.mark.parametrize("address", ["10.0.0.5:6379", "ray://head:10001", "auto"])
def test_joining_an_address_drops_the_local_only_options(calls, address):
    assert init_ray(address, 4, log_to_driver=False, dashboard_port=8301, include_dashboard=True) is False
    assert calls == [{"address": address, "ignore_reinit_error": True, "log_to_driver": False}]
    assert os.environ[STATE_API_ENV] == UNSET  # a joined cluster's State API is not pinned here


def test_ray_address_in_the_environment_is_joined(calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert init_ray(num_cpus=2, dashboard_port=8301) is False
    assert calls == [{"address": None, "ignore_reinit_error": True, "log_to_driver": True}]  # ray.init reads it
    assert os.environ[STATE_API_ENV] == UNSET


def test_an_explicit_address_wins_over_ray_address(calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert init_ray("local", 2) is True
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] == 2


def test_progress_bars_false_turns_ray_data_progress_bars_off(calls, data_context):
    init_ray(progress_bars=True)
    assert data_context.enable_progress_bars is True
    init_ray(progress_bars=False)
    assert data_context.enable_progress_bars is False
