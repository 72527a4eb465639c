"""Tests for bench/gpu.py: the --smoke run covers every part, and the JSON says what was measured, skipped or failed."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import load_bench

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu.py"
PARTS = ("train_step", "batched_vs_loop", "data_path", "embed", "faiss")
CUDA_ONLY_ROWS = ("peak GPU memory per step variant (GiB)", "largest batch, bf16",
                  "largest batch, bf16, gradient checkpointing")
RATES = ("tflops", "gflops", "step_s", "samples_per_s", "clips_per_s", "mfu", "batches_per_s", "call_s", "qps",
         "search_s", "gflops_per_step", "fit_wall_s")  # figures that must be > 0 wherever a row has them


gpu = load_bench("gpu")


@pytest.fixture(scope="module")
def smoke(shared_ray, tmp_path_factory) -> dict:
    """gpu.json of one `bench/gpu.py --smoke` run in a subprocess joining the session's local Ray, with a budget no
    busy machine exhausts (so that no row is skipped for lack of time)."""
    out = tmp_path_factory.mktemp("gpu_smoke")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--minutes", "30", "--output", str(out),
                    "--address", shared_ray.local().address], cwd=REPO, env=env, check=True, timeout=1800)
    return json.loads((out / "gpu.json").read_text())


def _rows(payload: dict, part: str) -> dict[str, dict]:
    return {r["what"]: r for r in payload["parts"][part]["rows"]}


def _numbers(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@pytest.mark.slow
def test_smoke_runs_every_part_and_records_each_row(smoke):
    assert smoke["smoke"] is True and tuple(smoke["parts"]) == PARTS
    for name, part in smoke["parts"].items():
        assert part["status"] == "ok", (name, part["error"])
        assert part["seconds"] > 0 and part["rows"], name
        for row in part["rows"]:
            assert row["status"] in ("ok", "skipped"), (name, row)
            if row["status"] == "skipped":
                assert row["reason"], (name, row)
                continue
            for key, value in _numbers(row).items():
                assert math.isfinite(value) and value >= 0, (name, row["what"], key, value)
                if key in RATES:
                    assert value > 0, (name, row["what"], key)


@pytest.mark.slow
def test_smoke_measures_the_training_shapes_and_a_real_ray_train_run(smoke):
    cfg = gpu.load_config(gpu.SMOKE.preset, list(gpu.SMOKE.overrides))
    b, n, t, s = cfg.optim.batch_size, cfg.sampling.train_n_clips, cfg.sampling.frames_per_clip, cfg.model.img_size
    data = _rows(smoke, "data_path")
    stage = data["Ray Data clip stage (make_batch)"]
    assert stage["status"] == "ok" and stage["shape"] == f"{b}x{n}x{t}x3x{s}x{s}"  # make_batch's (B, N, T, 3, S, S)
    assert data["clip stage supply / training step demand"]["status"] == "ok"
    run = next(r for w, r in data.items() if w.startswith("Ray Train run"))
    assert run["status"] == "ok" and run["steps"] == 2 * gpu.SMOKE.run_window_steps[0]
    assert 0 <= run["data_wait_first"] <= 1 and 0 <= run["data_wait_steady"] <= 1
    loop = _rows(smoke, "batched_vs_loop")
    assert loop["batched"]["gflops_per_step"] == pytest.approx(loop["per-clip loop"]["gflops_per_step"], rel=1e-6)
    steps = [r for w, r in _rows(smoke, "train_step").items() if w.startswith("step ") and r["status"] == "ok"]
    assert {r["precision"] for r in steps} == {"fp32", "bf16"} and all(r["B"] == b for r in steps)


@pytest.mark.slow
def test_smoke_on_cpu_marks_gpu_only_rows_skipped_with_the_reason(smoke):
    if smoke["device"]["type"] != "cpu":
        pytest.skip("the smoke run used a GPU")
    train = _rows(smoke, "train_step")
    for what in CUDA_ONLY_ROWS:
        assert train[what]["status"] == "skipped" and "CUDA" in train[what]["reason"]
    compiled = [r for w, r in train.items() if w.startswith("step bf16 torch.compile")]
    assert len(compiled) == 1 and compiled[0]["status"] == "skipped" and compiled[0]["reason"]
    faiss_rows = _rows(smoke, "faiss")
    gpu_rows = [r for w, r in faiss_rows.items() if w.endswith("on GPU")]
    cpu_rows = [r for w, r in faiss_rows.items() if w.endswith("on CPU")]
    assert len(gpu_rows) == len(cpu_rows) == 2 and all(r["status"] == "ok" for r in cpu_rows)
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        assert all(r["status"] == "skipped" and "faiss-gpu is not installed" in r["reason"] for r in gpu_rows)


# ----------------------------------------------------------------------------------------------- search logic
@pytest.mark.parametrize("limit, b0", [(37, 16), (16, 16), (5, 16), (300, 16), (2000, 16), (0, 16)])
def test_largest_batch_brackets_the_limit(monkeypatch, limit, b0):
    """With a step that fits up to `limit` videos, the search ends with fit <= limit < first_failure, within 1/8."""
    monkeypatch.setattr(gpu, "try_batch", lambda ctx, model, opt, b: ("ok", 1.0) if b <= limit else ("oom", 0.0))
    ctx = gpu.Context(torch.device("cpu"), dataclasses.replace(gpu.SMOKE, max_batch_cap=1024), Path("."), True,
                      gpu.load_config("tiny_ret"))
    found = gpu.largest_batch(ctx, None, None, b0, step_s=0.0, deadline=time.monotonic() + 60)
    assert found["complete"]
    if limit >= 1024:
        assert found["largest_fit"] == 1024 and found["first_failure"] is None  # the cap ends the doubling
        return
    assert found["largest_fit"] <= limit < found["first_failure"]
    assert found["first_failure"] - found["largest_fit"] <= max(1, found["largest_fit"] // 8)


def test_largest_batch_stops_at_another_failure_and_names_it(monkeypatch):
    def step(ctx, model, opt, b):
        return ("ok", 1.0) if b <= 40 else ("RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED", 0.0)

    monkeypatch.setattr(gpu, "try_batch", step)
    ctx = gpu.Context(torch.device("cpu"), dataclasses.replace(gpu.SMOKE, max_batch_cap=1024), Path("."), True,
                      gpu.load_config("tiny_ret"))
    found = gpu.largest_batch(ctx, None, None, 16, step_s=0.0, deadline=time.monotonic() + 60)
    assert (found["largest_fit"], found["first_failure"]) == (32, 64)  # no bisection past a failure that is no OOM
    assert "CUDNN_STATUS_NOT_SUPPORTED" in found["failure"]


def test_largest_batch_stops_at_the_deadline_with_a_lower_bound(monkeypatch):
    monkeypatch.setattr(gpu, "try_batch", lambda ctx, model, opt, b: ("ok", 1.0))
    ctx = gpu.Context(torch.device("cpu"), gpu.SMOKE, Path("."), True, gpu.load_config("tiny_ret"))
    found = gpu.largest_batch(ctx, None, None, 4, step_s=10.0, deadline=time.monotonic() + 35)
    assert not found["complete"] and found["largest_fit"] == 4  # 4 fits; 8 would take ~60 s


def test_a_failing_part_keeps_its_rows_and_records_the_error(monkeypatch):
    def part(ctx, rows, deadline):
        rows.append(gpu.ok("first", value=1.0))
        raise RuntimeError("boom")

    monkeypatch.setitem(gpu.PARTS, "boom", (part, "a part that fails"))
    ctx = gpu.Context(torch.device("cpu"), gpu.SMOKE, Path("."), True, gpu.load_config("tiny_ret"))
    result = gpu.run_part("boom", ctx, time.monotonic() + 60)
    assert result["status"] == "error" and result["error"] == "RuntimeError: boom"
    assert [r["what"] for r in result["rows"]] == ["first"]


@pytest.mark.parametrize("error, expected", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"), False),
    (ValueError("out of memory"), False),
])
def test_is_oom(error, expected):
    assert gpu.is_oom(error) is expected
