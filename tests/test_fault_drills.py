"""Fault drills on a two-node Ray cluster (ray.cluster_utils.Cluster): a worker process killed, a node lost, the
driver killed, during preprocessing, embedding and training; a full disk (a tmpfs each drill mounts) during
preprocessing and checkpointing, and a corrupt checkpoint at resume. Each checks that the result equals a clean
run's: the same manifest rows and frames, the same embeddings, training steps that continue from the last good
checkpoint, nothing lost and nothing written twice. (One cluster for all, to keep them cheap; the drills without Ray,
LMDB maps and corrupt checkpoints, are in test_storage_faults.py.)"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from drills import (
    STORE_OPTIONS,
    Background,
    ReportGate,
    Trigger,
    clean_store,
    complete_shard_ids,
    fault_spec,
    fill_disk,
    pickle_by_value,
    small_disk,
    snapshot,
    store_contents,
    write_videos,
)

from clipbert.data import frames as fs
from clipbert.faults import EMBED_FAULT_ENV, PREPROCESS_FAULT_ENV
from pipelines.preprocess import run_preprocess

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ALL = [f"v{i}" for i in range(6)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return write_videos(tmp_path_factory.mktemp("videos"), len(ALL))


@pytest.fixture(scope="module")
def clean(videos, tmp_path_factory):
    return clean_store(videos, tmp_path_factory.mktemp("clean") / "store")


def _worker_node(cluster):
    """The cluster's (only) non-head node."""
    (node,) = cluster.worker_nodes
    return node


def _replace_node(cluster, node) -> None:
    """Remove `node` at once (its processes killed, as a crashed machine), then add a fresh 1-CPU node in its place
    (as an autoscaler would), so later drills have two nodes again."""
    cluster.remove_node(node, allow_graceful=False)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()


def _marked_dead(node_id: str, timeout_s: float = 60.0) -> bool:
    """Whether Ray marks the node dead within `timeout_s` (its health checks take a few seconds to notice)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not next(n for n in ray.nodes() if n["NodeID"] == node_id)["Alive"]:
            return True
        time.sleep(0.5)
    return False


def _check_store(out: Path, clean: Path) -> None:
    assert sorted(complete_shard_ids(out)) == ALL  # every video once: nothing lost, nothing written twice
    assert store_contents(out) == store_contents(clean)  # same manifest rows and frames as a clean run


# ------------------------------------------------------------------------------------------------ preprocessing
def test_a_killed_preprocessing_worker_is_retried(ray_two_nodes, videos, clean, tmp_path, monkeypatch):
    """The worker process writing v2's shard is SIGKILLed mid-shard; Ray Data retries the task, which rewrites that
    shard."""
    monkeypatch.setenv(PREPROCESS_FAULT_ENV, fault_spec(tmp_path, video_id="v2"))
    trigger = Trigger(tmp_path / "held.json", lambda held: os.kill(held["pid"], signal.SIGKILL))
    out = tmp_path / "store"
    summary = run_preprocess(str(videos), str(out), STORE_OPTIONS, videos_per_shard=1)
    assert trigger.join()["video_id"] == "v2"
    assert (summary.videos_ok, summary.videos_failed, summary.videos_skipped) == (6, 0, 0)
    _check_store(out, clean)
    assert len(fs.shard_dirs(out)) == 6  # the retry wrote the killed task's shard again, not a second one


def test_a_video_that_kills_its_decoding_process_gets_a_failed_row_and_the_rest_is_stored(ray_two_nodes, videos,
                                                                                        clean, tmp_path,
                                                                                        monkeypatch):
    """Every process that starts decoding v1 is SIGKILLed (as a segfaulting decoder or the out-of-memory killer
    would); Ray Data would retry its task forever, the decode journal records v1 as failed after two deaths."""
    monkeypatch.setenv(PREPROCESS_FAULT_ENV, json.dumps({"die_at": "v1"}))
    out = tmp_path / "store"
    summary = run_preprocess(str(videos), str(out), STORE_OPTIONS, videos_per_shard=1)
    assert (summary.videos_ok, summary.videos_failed) == (5, 1)
    assert summary.failures == [("v1", "the decoding process died 2 times on this video (a decoder crash or out "
                                       "of memory): not tried again")]
    assert sorted(complete_shard_ids(out)) == ALL  # v1's failed row once, every other video once
    (manifest, frames), (clean_manifest, clean_frames) = store_contents(out), store_contents(clean)
    assert [r for r in manifest if r["video_id"] != "v1"] == [r for r in clean_manifest if r["video_id"] != "v1"]
    assert frames == {v: f for v, f in clean_frames.items() if v != "v1"}
    assert not (out / "decoding").exists()


def test_a_killed_preprocessing_driver_then_the_same_command_equals_a_clean_run(ray_two_nodes, videos, clean,
                                                                              tmp_path):
    """jobs/preprocess.py joins the cluster and is SIGKILLed (the driver alone, as a lost `ray job submit` client)
    while v4's shard is being written; the same command run again removes that unfinished shard, skips the stored
    videos and stores the rest."""
    from jobs import preprocess as job

    out = tmp_path / "store"
    args = ["--videos", str(videos), "--output", str(out), "--max-side", str(STORE_OPTIONS.max_side),
            "--videos-per-shard", "1", "--concurrency", "1", "--address", ray_two_nodes.address]
    env = {**os.environ, PREPROCESS_FAULT_ENV: fault_spec(tmp_path, video_id="v4")}
    driver = subprocess.Popen([sys.executable, "jobs/preprocess.py", *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    trigger = Trigger(tmp_path / "held.json", lambda held: driver.send_signal(signal.SIGKILL))
    output = driver.communicate(timeout=300)[0].decode()
    assert driver.returncode == -signal.SIGKILL, output[-3000:]
    assert trigger.join()["video_id"] == "v4"
    stored = complete_shard_ids(out)
    assert "v4" not in stored and len(stored) < len(fs.shard_dirs(out))  # v4's shard was left unfinished
    assert not (out / fs.MANIFEST_FILE).exists()

    assert job.main(args) == 0
    _check_store(out, clean)


# ------------------------------------------------------------------------------------------------- embedding
def test_a_killed_index_driver_then_resumed_gives_the_same_embeddings_once(ray_two_nodes, tiny_corpus, tmp_path):
    """jobs/build_index.py joins the cluster and is SIGKILLed while it writes its second embedding shard (16 videos
    in 4 blocks, one shard each, written one after another); run again, it embeds only the rest and builds the
    index: the finished shard untouched, every video once, each equal to the model's embedding computed here."""
    from conftest import tiny_checkpoint

    from clipbert.config import config_to_dict
    from clipbert.retrieval.embeddings import read_rows
    from jobs import build_index as job
    from pipelines.embed import Embedder, load_clips

    cfg = tiny_corpus.config()
    checkpoint = tiny_checkpoint(cfg, tmp_path / "ckpt", seed=0)
    gallery = sorted(tiny_corpus.train_ids[:8] + tiny_corpus.val_ids + tiny_corpus.test_ids)
    (tmp_path / "videos.txt").write_text("\n".join(gallery) + "\n")
    out, emb = tmp_path / "index", tmp_path / "index" / "embeddings"
    args = ["--checkpoint", checkpoint, "--frame-store", str(tiny_corpus.frames), "--output", str(out),
            "--videos", str(tmp_path / "videos.txt"), "--clips", "2", "--batch-size", "1", "--num-actors", "1",
            "--address", ray_two_nodes.address]
    env = {**os.environ, EMBED_FAULT_ENV: fault_spec(tmp_path, after=str(emb / "shards" / "*.parquet"))}
    driver = subprocess.Popen([sys.executable, "jobs/build_index.py", *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    trigger = Trigger(tmp_path / "held.json", lambda held: driver.send_signal(signal.SIGKILL))
    output = driver.communicate(timeout=300)[0].decode()
    assert driver.returncode == -signal.SIGKILL, output[-3000:]
    held = trigger.join()["video_id"]
    before = read_rows(emb, ["video_id"]).column("video_id").to_pylist()
    assert 0 < len(before) < len(gallery) and held not in before, output[-3000:]
    assert not (out / "index.json").exists()
    finished = {p: p.read_bytes() for p in (emb / "shards").glob("*.parquet")}

    assert job.main(args) == 0
    assert all(p.read_bytes() == data for p, data in finished.items())  # what was done stays as it was
    rows = read_rows(emb).to_pylist()
    assert sorted(r["video_id"] for r in rows) == gallery  # every video once
    assert sorted(pq.read_table(out / "ids.parquet").column("video_id").to_pylist()) == gallery
    batch = load_clips({"video_id": np.array(gallery)}, cfg=config_to_dict(
        tiny_corpus.config("synthetic_tiny", f"data.frame_store={tiny_corpus.frames}")), n_clips=2)
    expected = Embedder(checkpoint, use_gpu=False)(batch)
    by_id = {r["video_id"]: r for r in rows}
    for i, video_id in enumerate(gallery):  # (float sums of other batch shapes and thread counts: 1e-4)
        assert by_id[video_id]["status"] == "ok"
        np.testing.assert_allclose(by_id[video_id]["clip_embeddings"], expected["clip_embeddings"][i], atol=1e-4)
        np.testing.assert_allclose(by_id[video_id]["video_embedding"], expected["video_embedding"][i], atol=1e-4)


# ----------------------------------------------------------------------------------- full disk: preprocessing
def test_a_full_disk_stops_preprocessing_with_the_path_and_a_rerun_completes(ray_two_nodes, videos, clean, tmp_path,
                                                                             monkeypatch, capsys):
    """The output is on a 10 MB tmpfs. The write task of v3 is held; the test fills the disk and releases it: its
    LMDB commit fails. The job exits 1 with one line naming the shard, v3 is not stored and no manifest claims
    more than the finished shards; after the space is freed the same command stores the rest: the store equals a
    clean run's."""
    from jobs import preprocess as job

    with small_disk(tmp_path / "disk") as disk:
        out = disk / "store"
        args = ["--videos", str(videos), "--output", str(out), "--max-side", str(STORE_OPTIONS.max_side),
                "--videos-per-shard", "1", "--concurrency", "1", "--address", ray_two_nodes.address]
        ballast = []
        monkeypatch.setenv(PREPROCESS_FAULT_ENV, fault_spec(tmp_path, video_id="v3", release=str(tmp_path / "go")))
        trigger = Trigger(tmp_path / "held.json", lambda held: ballast.append(fill_disk(disk)), tmp_path / "go")
        assert job.main(args) == 1
        assert trigger.join()["video_id"] == "v3"
        errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
        assert len(errors) == 1, errors
        assert "No space left on device writing frame-store shard " + str(out / fs.SHARDS_DIR / "r000-") in errors[0]
        stored = complete_shard_ids(out)
        assert "v3" not in stored and len(stored) == len(set(stored)) and set(stored) <= set(ALL)
        assert not (out / fs.MANIFEST_FILE).exists()  # written only when every shard is done

        ballast[0].unlink()
        monkeypatch.delenv(PREPROCESS_FAULT_ENV)
        assert job.main(args) == 0
        assert f"videos: {6 - len(stored)} ok, 0 failed, {len(stored)} already done" in capsys.readouterr().out
        _check_store(out, clean)


# ----------------------------------------------------------------------------- preprocessing: a node lost
def test_preprocessing_survives_losing_a_node(ray_two_nodes, videos, clean, tmp_path, monkeypatch):
    """The second node is removed while one of its tasks writes a shard; the run finishes on the head node. (Then a
    fresh node is added for the training drill.)"""

    node = _worker_node(ray_two_nodes)
    monkeypatch.setenv(PREPROCESS_FAULT_ENV, fault_spec(tmp_path, node_id=node.node_id))
    trigger = Trigger(tmp_path / "held.json", lambda held: ray_two_nodes.remove_node(node, allow_graceful=False))
    out = tmp_path / "store"
    try:
        summary = run_preprocess(str(videos), str(out), STORE_OPTIONS, videos_per_shard=1)
        assert trigger.join()["node_id"] == node.node_id
        assert _marked_dead(node.node_id)
    finally:
        ray_two_nodes.add_node(num_cpus=1)
        ray_two_nodes.wait_for_nodes()
    assert (summary.videos_ok, summary.videos_failed) == (6, 0)
    _check_store(out, clean)


# ---------------------------------------------------------------------------------------- training (last)
def test_training_survives_a_lost_node_a_full_disk_and_a_corrupt_checkpoint(ray_two_nodes, tiny_corpus, tmp_path,
                                                                            caplog):
    """One training run, its storage on a 128 MB tmpfs (a checkpoint of the tiny model with its optimiser state takes
    13 MB), two workers, one per node, 10 steps, checkpoints every 2 (the run's controller is held at the points
    named, by tests/drills.py::ReportGate):

    1. at the first checkpoint the second node is removed (a fresh one added, as an autoscaler would): the workers
       restart from the last registered checkpoint;
    2. at the restarted workers' first checkpoint the disk is filled: the next checkpoint cannot be written, and the
       run (out of restarts) fails with one OSError naming it; the failed checkpoint is not registered, no best/;
    3. the space is freed and the newest registered checkpoint is then found torn (its weights truncated): the same
       run warns, moves it aside, resumes from the previous good checkpoint and finishes its 10 steps.
    """
    from clipbert.training import run as training

    pickle_by_value()
    cfg = tiny_corpus.config("synthetic_tiny", "train.placement_strategy=SPREAD", "train.max_failures=1",
                             "train.keep_checkpoints=2", "optim.num_epochs=2", "data.test_file=''")
    task = training.prepare_task(cfg)
    node = _worker_node(ray_two_nodes)
    gates = tmp_path / "gates"
    gates.mkdir()
    with small_disk(tmp_path / "disk", size="128M") as disk:
        run = disk / "run"
        job = Background(lambda: training.fit_and_export(cfg, task, storage_path=str(disk), name="run",
                                                         callbacks=[ReportGate(gates, ("any", "resumed"))]))
        assert job.wait_for(gates / "held1.json")["step"] == 2
        _replace_node(ray_two_nodes, node)  # here: Ray adds nodes from the main thread only
        (gates / "go1").touch()
        restarted = job.wait_for(gates / "held2.json")
        assert restarted["resumed_from_step"] in (2, 4) and _marked_dead(node.node_id)  # 4: its report beat the loss
        ballast = fill_disk(disk)
        (gates / "go2").touch()
        with pytest.raises(OSError) as info:
            job.result()
        assert info.value.errno == errno.ENOSPC and re.fullmatch(
            rf"\[Errno 28\] [^\n]*No space left on device \(in run {re.escape(str(run))}\); checkpoints "
            "reported before it are kept: fix that, then re-run the same command to resume from the last one",
            str(info.value)), str(info.value)
        registered = {r["checkpoint_dir_name"]: r["metrics"]["step"] for r in snapshot(run)["checkpoint_results"]}
        assert max(registered.values()) in (restarted["step"], restarted["step"] + 2)  # +2: its upload beat the fill
        assert not (run / "best").exists() and not (run / "final_metrics.json").exists()

        ballast.unlink()
        newest = snapshot(run)["latest_checkpoint_result"]["checkpoint_dir_name"]
        weights = run / newest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        previous_step, previous = max((s, d) for d, s in registered.items() if d != newest)
        with caplog.at_level("WARNING", logger="clipbert.training.run"):
            final = training.fit_and_export(cfg, task, storage_path=str(disk), name="run")
        (warning,) = [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]
        assert newest in warning and "model.safetensors cannot be loaded" in warning
        assert warning.endswith(f"resuming from {previous}")
        assert (run / training.CORRUPT_DIR / newest).is_dir() and not (run / newest).exists()
        assert (final["last"]["step"], final["last"]["resumed_from_step"]) == (10, previous_step)
        assert snapshot(run)["latest_checkpoint_result"]["metrics"]["step"] == 10
        assert Path(final["exported"], "model.safetensors").is_file()
