"""Tests of clipbert/faults.py in this process: the fault spec read from the environment, when hold_once holds and
what it writes, and die_at's signal, with sleeping, exiting and killing replaced by recorders."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from clipbert import faults
from clipbert.faults import EMBED_FAULT_ENV, PREPROCESS_FAULT_ENV, die_at, from_env, hold_once


class Held(Exception):
    """Raised by the stand-in sleep: the process would have held."""


class Exited(Exception):
    """Raised by the stand-in os._exit, with its code."""


@pytest.fixture
def no_hold(monkeypatch):
    """Sleeping raises Held, so a test sees a hold instead of waiting in it."""

    def sleep(seconds: float) -> None:
        raise Held(seconds)

    monkeypatch.setattr(faults.time, "sleep", sleep)
    monkeypatch.setattr(faults, "_node_id", lambda: "node-1")


# ------------------------------------------------------------------------------------------ from_env
@pytest.mark.parametrize("name", [PREPROCESS_FAULT_ENV, EMBED_FAULT_ENV])
def test_an_unset_or_blank_variable_is_no_fault(monkeypatch, name):
    monkeypatch.delenv(name, raising=False)
    assert from_env(name) is None
    monkeypatch.setenv(name, "  \n")
    assert from_env(name) is None


@pytest.mark.parametrize("spec", [
    {"marker": "/tmp/drill/held.json"},
    {"die_at": "v5"},
    {"marker": "/m", "video_id": "v3", "node_id": "ab", "after": "/out/*.parquet", "release": "/go", "hold_s": 5},
])
def test_a_spec_is_read_as_its_json_object(monkeypatch, spec):
    monkeypatch.setenv(PREPROCESS_FAULT_ENV, json.dumps(spec))
    assert from_env(PREPROCESS_FAULT_ENV) == spec


@pytest.mark.parametrize("text", ['{"video_id": "v3"}', '["marker", "die_at"]', '"marker"'])
def test_a_spec_without_marker_or_die_at_names_the_variable(monkeypatch, text):
    monkeypatch.setenv(EMBED_FAULT_ENV, text)
    with pytest.raises(ValueError, match=rf"^{EMBED_FAULT_ENV} must be a JSON object with a 'marker' path or a "
                                         rf"'die_at' video, got '.*'$"):
        from_env(EMBED_FAULT_ENV)


def test_a_spec_that_is_not_json_is_a_value_error(monkeypatch):
    monkeypatch.setenv(PREPROCESS_FAULT_ENV, "{marker: /tmp}")
    with pytest.raises(ValueError):
        from_env(PREPROCESS_FAULT_ENV)


# ------------------------------------------------------------------------------------------ hold_once
def _spec(tmp_path: Path, **extra) -> dict:
    return {"marker": str(tmp_path / "held.json"), **extra}


@pytest.mark.parametrize("make_spec", [
    lambda tmp: None,
    lambda tmp: {},
    lambda tmp: {"die_at": "v1"},  # no marker: nothing to hold at
    lambda tmp: _spec(tmp, video_id="v2"),  # another video
    lambda tmp: _spec(tmp, node_id="node-2"),  # another node
    lambda tmp: _spec(tmp, after=str(tmp / "*.parquet")),  # no file matches yet
], ids=["none", "empty", "die_at_only", "other_video", "other_node", "nothing_after"])
def test_hold_once_passes_when_the_spec_does_not_match(tmp_path, no_hold, make_spec):
    hold_once(make_spec(tmp_path), "v1")
    assert not list(tmp_path.iterdir())  # no marker, no temporary file


def test_the_first_matching_task_writes_the_marker_and_holds(tmp_path, no_hold):
    with pytest.raises(Held):
        hold_once(_spec(tmp_path, video_id="v1", node_id="node-1"), "v1")
    marker = json.loads((tmp_path / "held.json").read_text())
    assert marker == {"pid": os.getpid(), "node_id": "node-1", "video_id": "v1"}
    assert [p.name for p in tmp_path.iterdir()] == ["held.json"]  # the temporary file is gone


def test_a_hold_waits_for_a_matching_file_when_after_is_set(tmp_path, no_hold):
    spec = _spec(tmp_path, after=str(tmp_path / "shards" / "*.parquet"))
    hold_once(spec, "v1")
    assert not (tmp_path / "held.json").exists()
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "r000.parquet").write_bytes(b"")
    with pytest.raises(Held):
        hold_once(spec, "v2")
    assert json.loads((tmp_path / "held.json").read_text())["video_id"] == "v2"


def test_once_the_marker_exists_no_task_holds_again(tmp_path, no_hold):
    spec = _spec(tmp_path)
    (tmp_path / "held.json").write_text('{"pid": 1}')
    hold_once(spec, "v1")  # would raise Held if it held
    assert (tmp_path / "held.json").read_text() == '{"pid": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["held.json"]


def test_a_held_task_goes_on_once_released(tmp_path, monkeypatch):
    release = tmp_path / "go"
    sleeps = []

    def sleep(seconds: float) -> None:  # the test "releases" the task during its second wait
        sleeps.append(seconds)
        if len(sleeps) == 2:
            release.write_text("")

    monkeypatch.setattr(faults.time, "sleep", sleep)
    hold_once(_spec(tmp_path, release=str(release)), "v1")
    assert len(sleeps) == 2 and (tmp_path / "held.json").exists()


def test_a_task_not_released_within_hold_s_exits_abruptly(tmp_path, monkeypatch):
    def exit_(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(faults.os, "_exit", exit_)
    with pytest.raises(Exited) as info:
        hold_once(_spec(tmp_path, release=str(tmp_path / "never"), hold_s=0.2), "v1")
    assert info.value.args == (1,)


# ------------------------------------------------------------------------------------------ die_at
@pytest.mark.parametrize("spec", [None, {}, {"marker": "/m"}, {"die_at": "v2"}])
def test_die_at_spares_other_videos(monkeypatch, spec):
    kills = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    die_at(spec, "v1")
    assert kills == []


def test_die_at_sigkills_this_process_at_its_video(monkeypatch):
    kills = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    die_at({"die_at": "v1", "marker": "/m"}, "v1")
    assert kills == [(os.getpid(), signal.SIGKILL)]
