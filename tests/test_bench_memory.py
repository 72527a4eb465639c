"""Tests for bench/memory.py: processes are grouped by what they ran, the quarter figures and growth come from the
right samples, the sampler sees this process and its children, and a tiny end-to-end run reports every phase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray  # noqa: F401  (puts Ray's copy of psutil on sys.path, which the sampler imports)
from conftest import load_bench

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "memory.py"
MIB = 2**20

memory = load_bench("memory")


@pytest.mark.parametrize("titles, group", [
    ({".venv/bin/python"}, "driver"),  # the driver's pid, whatever its title
    ({"/x/ray/core/src/ray/raylet/raylet"}, "ray system"),
    ({"/x/bin/python", "ray-dashboard-StateHead-0"}, "ray system"),
    ({"ray::DashboardAgent"}, "ray system"),
    ({"ray::IDLE", "ray::MapBatches(decode_batch)->Write"}, "data tasks"),
    ({"ray::ReadItems"}, "data tasks"),
    ({"ray::IDLE", "ray::map"}, "data tasks"),  # a random_shuffle task
    ({"ray::IDLE", "ray::RayTrainWorker.run_train_fn", "ray::MapBatches(make_batch)"}, "train workers"),
    ({"ray::TrainController.run"}, "other ray::"),
    ({"ray::SplitCoordinator.get"}, "other ray::"),
    ({"ray::IDLE"}, "other ray::"),
])
def test_processes_are_grouped_by_every_title_they_had(titles, group):
    pid = 1 if group == "driver" else 2
    assert memory.group_of(pid, titles, driver=1) == group


def test_summary_reads_peaks_quarters_and_growth_from_the_samples():
    rows = [(0.0, 1, 100 * MIB, 60 * MIB, 80 * MIB), (0.0, 7, 50 * MIB, 10 * MIB, None),
            (1.0, 1, 300 * MIB, 90 * MIB, None), (1.0, 7, 400 * MIB, 30 * MIB, None),
            (1.0, 8, 450 * MIB, 20 * MIB, 90 * MIB),
            (2.0, 1, 200 * MIB, 70 * MIB, None), (3.0, 1, 250 * MIB, 75 * MIB, 120 * MIB),
            (4.0, 1, 260 * MIB, 80 * MIB, None), (4.0, 7, 410 * MIB, 40 * MIB, 70 * MIB)]
    titles = {1: {"python"}, 7: {"ray::IDLE", "ray::MapBatches(f)"}, 8: {"ray::MapBatches(f)"}}
    groups = memory.summarize(rows, titles, driver=1)
    assert set(groups) == {"driver", "data tasks"}
    driver, data = groups["driver"], groups["data tasks"]
    assert (driver["processes"], driver["peak_rss_mib"], driver["peak_anon_mib"], driver["peak_uss_mib"]) == (
        1, 300, 90, 120)
    assert [driver[f"rss_at_{q}pct_mib"] for q in (25, 50, 75, 100)] == [300, 200, 250, 260]  # at 1, 2, 3, 4 s
    assert [driver[f"anon_at_{q}pct_mib"] for q in (25, 50, 75, 100)] == [90, 70, 75, 80]
    assert (driver["rss_growth_mib"], driver["anon_growth_mib"]) == (-40, -10)
    assert (data["processes"], data["peak_rss_mib"], data["peak_uss_mib"]) == (2, 450, 90)  # pid 7 ran a Map once
    assert [data[f"rss_at_{q}pct_mib"] for q in (25, 100)] == [450, 410] and data["rss_growth_mib"] == -40
    assert data["anon_growth_mib"] == 10  # the largest anonymous part at 1 s (30, pid 7), at 4 s (40)
    assert data["series"] == [[0.0, 50.0, 10.0, None], [1.0, 450.0, 30.0, 90.0], [4.0, 410.0, 40.0, 70.0]]


def test_summary_has_no_growth_for_a_group_that_starts_after_the_first_quarter():
    rows = [(0.0, 1, MIB, MIB, MIB), (3.0, 5, 9 * MIB, MIB, MIB), (4.0, 1, MIB, MIB, None)]
    train = memory.summarize(rows, {1: {"python"}, 5: {"ray::RayTrainWorker"}}, driver=1)["train workers"]
    assert train["rss_at_25pct_mib"] is None and train["rss_at_100pct_mib"] == 9 and train["rss_growth_mib"] is None


def test_sampler_sees_this_process_and_its_children_and_reads_uss_at_every_nth_sample():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with memory.Sampler(0.05, uss_every=3) as sampler:
            time.sleep(0.6)
    finally:
        child.kill()
        child.wait()
    assert sampler.seconds >= 0.6 and sampler.sample_s > 0
    mine = [r for r in sampler.rows if r[1] == os.getpid()]
    theirs = [r for r in sampler.rows if r[1] == child.pid]
    assert len(mine) >= 5 and len(theirs) >= 5 and all(0 < r[3] < r[2] for r in mine + theirs)  # 0 < anon < RSS
    assert sampler.titles[child.pid] == {sys.executable}
    uss = [r[4] for r in mine]
    assert uss[0] > 0 and uss[-1] > 0 and None in uss  # the first and the last sample, every 3rd in between
    assert mine[-1][0] >= 0.6  # the last sample is taken at the end of the block


@pytest.mark.slow
def test_tiny_run_reports_driver_and_worker_memory_of_both_phases(tmp_path):
    """One size (each size starts its own Ray and Ray Train run: more sizes add time, not checks)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    args = ["--videos", "10", "--sizes", "10", "--val-videos", "2", "--epochs", "1", "--interval", "0.2",
            "--set", "optim.batch_size=2", "--workdir", str(tmp_path / "work"), "--output", str(tmp_path)]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "memory.json").read_text())
    assert payload["sizes"] == [10] and payload["machine"]["cpus"] >= 1
    assert [r["videos"] for r in payload["results"]] == [10]
    for result in payload["results"]:
        k, phases = result["videos"], result["phases"]
        assert list(phases) == ["preprocess", "train"]
        assert phases["preprocess"]["videos_ok"] == k and phases["preprocess"]["videos_failed"] == 0
        assert phases["train"]["train_rows"] == k - 2 and phases["train"]["steps"] == (k - 2) // 4  # 2 workers x 2
        assert phases["train"]["final"]["step"] == phases["train"]["steps"]
        for phase, workers in (("preprocess", "data tasks"), ("train", "train workers")):
            p = phases[phase]
            assert p["seconds"] > 0 and {"driver", workers, "ray system"} <= set(p["groups"]), (k, phase)
            for g in ("driver", workers):
                s = p["groups"][g]
                assert s["peak_rss_mib"] > 50 and 0 < s["peak_uss_mib"] <= s["peak_rss_mib"], (k, phase, g)
                assert 0 < s["peak_anon_mib"] <= s["peak_rss_mib"], (k, phase, g)
                assert s["rss_at_100pct_mib"] > 0 and len(s["series"]) >= 2, (k, phase, g)
        assert phases["train"]["groups"]["train workers"]["processes"] == 2
        assert phases["preprocess"]["groups"]["driver"]["rss_growth_mib"] is not None
    assert "anon growth" in done.stdout and "train workers" in done.stdout
