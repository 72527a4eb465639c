"""Tests of clipbert/sweep/run.py without Ray: the resource plan, the checks made before a sweep starts, resume checks.
The sweeps themselves run in test_tune_job.py."""

from __future__ import annotations

import json

import pytest

from clipbert.config import load_config_tree
from clipbert.sweep.run import (
    SweepSpec,
    check_same_sweep,
    count_trials,
    longest_schedule,
    plan_sweep,
    prepare_sweep,
    trial_share,
)
from clipbert.sweep.space import Dimension


@pytest.mark.parametrize("cluster, workers, gpu, requested, trials, expected", [
    ({"CPU": 2.0}, 1, False, None, 8, (1, 0.995, 0.5)),  # this machine: one trial at a time
    ({"CPU": 2.0}, 1, False, 2, 8, (2, 0.495, 0.495)),  # asked for two: each worker gets about half a core
    ({"CPU": 16.0}, 1, False, None, 8, (7, 1.0, 1.0)),  # whole CPUs for every worker and its data stage
    ({"CPU": 16.0}, 1, False, None, 3, (3, 1.0, 1.0)),  # never more than there are trials
    ({"CPU": 64.0, "GPU": 8.0}, 2, True, None, 10, (4, 1.0, 1.0)),  # GPUs bound it: 4 trials x 2 workers
    ({"CPU": 64.0, "GPU": 8.0}, 2, True, 3, 10, (3, 1.0, 1.0)),
])
def test_plan_sweep_fits_concurrent_trials_to_the_cluster(cluster, workers, gpu, requested, trials, expected):
    plan = plan_sweep(cluster, workers, gpu, requested, trials)
    assert (plan.max_concurrent, round(plan.cpus_per_worker, 3), plan.data_cpus) == expected
    used = plan.max_concurrent * (0.01 + workers * plan.cpus_per_worker + plan.data_cpus)
    assert used <= cluster["CPU"] + 1e-9  # workers, one data task and the trial functions all fit at once
    assert plan.share == trial_share(cluster, plan.max_concurrent)


@pytest.mark.parametrize("cluster, workers, gpu, requested, message", [
    ({"CPU": 2.0}, 9, False, None, r"1 concurrent trial\(s\) get 1.99 of the cluster's 2 CPUs each: --num-workers 9 "
                                   r"cannot be placed"),
    ({"CPU": 2.0}, 1, False, 4, r"4 concurrent trial\(s\) get 0.49 of the cluster's 2 CPUs each"),
    ({"CPU": 32.0, "GPU": 4.0}, 2, True, 3, r"3 concurrent trial\(s\) x 2 worker\(s\) need 6 GPUs; the cluster has 4"),
    ({"CPU": 32.0}, 1, True, None, r"need 1 GPUs; the cluster has 0"),
    ({"CPU": 2.0}, 1, False, 0, "--max-concurrent must be >= 1"),
])
def test_plan_sweep_refuses_what_cannot_fit_with_the_numbers(cluster, workers, gpu, requested, message):
    with pytest.raises(ValueError, match=message):
        plan_sweep(cluster, workers, gpu, requested, 8)


def test_count_trials_repeats_every_grid_point():
    dims = [Dimension("model.consensus", "grid", ("mean", "max", "lse")), Dimension("optim.lr", "uniform", (0.1, 1)),
            Dimension("optim.batch_size", "grid", (2, 4))]
    assert count_trials(dims, 2) == 12
    assert count_trials(dims[1:2], 5) == 5


def test_longest_schedule_is_the_longest_trial_that_can_train():
    tree = load_config_tree("synthetic_tiny", ["optim.num_epochs=2"])
    dims = [Dimension("optim.batch_size", "choice", (4, 2, 64))]  # 64 cannot train on 20 rows: skipped
    assert longest_schedule(tree, dims, num_rows=20) == 20  # batch 2 x 1 worker: 10 steps per epoch, 2 epochs
    with pytest.raises(ValueError, match="no trial of the space can train on 20 rows"):
        longest_schedule(tree, [Dimension("optim.batch_size", "choice", (64,))], num_rows=20)


def _spec(corpus, tmp_path, space: str, **kw) -> SweepSpec:
    path = tmp_path / "space.yaml"
    path.write_text(space)
    kw.setdefault("storage_path", str(tmp_path / "sweeps"))
    return SweepSpec(config="synthetic_tiny", space=str(path), overrides=[f"data.root={corpus.root}"], **kw)


def test_prepare_sweep_checks_metric_and_storage_before_anything_starts(tiny_corpus, tmp_path):
    prepared = prepare_sweep(_spec(tiny_corpus, tmp_path, "optim.lr: {loguniform: [1.0e-5, 1.0e-3]}\n"))
    assert (prepared.metric, prepared.mode, len(prepared.task.train), len(prepared.task.test)) == ("t2v_r1", "max",
                                                                                                   20, 4)
    space = "optim.lr: {choice: [1.0e-4]}\n"
    with pytest.raises(ValueError, match=r"--metric 'recall' is never reported by retrieval training; it reports "
                                         r".*itc_t2v_r1.*mc_acc.*step.*t2v_r1"):
        prepare_sweep(_spec(tiny_corpus, tmp_path, space, metric="recall"))
    assert prepare_sweep(_spec(tiny_corpus, tmp_path, space, metric="itc_t2v_medr", mode="min")).mode == "min"
    with pytest.raises(PermissionError, match="is not writable"):
        prepare_sweep(_spec(tiny_corpus, tmp_path, space, storage_path="/proc/sweeps"))
    with pytest.raises(ValueError, match="use choice instead of grid"):
        prepare_sweep(_spec(tiny_corpus, tmp_path, "optim.lr: {grid: [1.0e-4]}\n", search="optuna"))
    with pytest.raises(ValueError, match="--scheduler must be one of"):
        prepare_sweep(_spec(tiny_corpus, tmp_path, space, scheduler="hyperband"))


def test_resume_refuses_a_sweep_started_with_other_arguments(tmp_path):
    started = {"spec": {"space": "a.yaml", "num_samples": 8, "max_concurrent": None}, "metric": "t2v_r1",
               "mode": "max", "max_steps": 100, "trials": 8}
    (tmp_path / "sweep.json").write_text(json.dumps(started))
    check_same_sweep(tmp_path / "sweep.json", started)  # the same: resumes
    check_same_sweep(tmp_path / "sweep.json", {**started, "spec": {**started["spec"], "max_concurrent": 2}})
    changed = {**started, "spec": {**started["spec"], "num_samples": 16}, "trials": 16}
    with pytest.raises(ValueError, match=r"started differently \(num_samples: 8 -> 16; trials: 8 -> 16\)"):
        check_same_sweep(tmp_path / "sweep.json", changed)


def test_searchers_are_seeded_and_carry_the_concurrency_limit():
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from clipbert.sweep.run import make_searcher

    random = make_searcher(SweepSpec(config="c", space="s", seed=3), max_concurrent=2)
    assert isinstance(random, BasicVariantGenerator) and random.max_concurrent == 2
    assert isinstance(make_searcher(SweepSpec(config="c", space="s", search="optuna"), max_concurrent=2), OptunaSearch)


def test_asha_never_stops_a_trial_at_its_last_evaluation(tiny_corpus, tmp_path):
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    from clipbert.sweep.run import make_scheduler

    prepared = prepare_sweep(_spec(tiny_corpus, tmp_path, "optim.lr: {choice: [1.0e-4]}\n", grace_period=2))
    scheduler = make_scheduler(prepared)
    scheduler.set_search_properties("t2v_r1", "max")

    class Trial:
        trial_id = "t"

    scheduler.on_trial_add(None, Trial())
    last = {"step": prepared.max_steps, "t2v_r1": 50.0}
    assert scheduler.on_trial_result(None, Trial(), last) == TrialScheduler.CONTINUE
