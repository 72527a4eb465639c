"""Tests of bench/learn.py's bookkeeping: records merged over sessions into one table with per-seed and mean rows,
the verdicts on the paper's claims, the modes' stages, and records that hold relative paths, read back under the
workdir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_bench

from clipbert.training.diagnostics import DIAGNOSTICS


@pytest.fixture(scope="module")
def learn():
    return load_bench("learn")


def _record(mode: str, seed: int, r1: float, mc: float) -> dict:
    return {"mode": mode, "label": mode, "seed": seed, "date": "2026-12-02", "load_avg": 2.0, "budget_min": 20.0,
            "test": {"t2v_r1": r1, "t2v_r5": 90.0, "t2v_medr": 1.0, "itc_t2v_r1": 40.0, "mc_acc": mc}, "test_step": 9,
            "steps": 10, "wall_s": 600.0, "stopped": "schedule finished",
            "curve": [{"step": 5, "wall_s": 300.0, "t2v_r1": r1, "train_samples_per_s": 90.0},
                      {"step": 10, "wall_s": 600.0, "t2v_r1": r1, "mc_acc": mc, "train_samples_per_s": 110.0},
                      {"step": 15, "wall_s": 900.0, "t2v_r1": r1, "train_samples_per_s": 50.0}]}


def test_merge_builds_one_table_with_seed_and_mean_rows_and_the_verdicts(learn, tmp_path, capsys):
    runs = tmp_path / "learn_runs"
    runs.mkdir()
    records = (_record("image_text", 0, 60, 90), _record("image_text", 11, 40, 70), _record("scratch_sparse", 0, 20, 70),
               _record("scratch_dense", 0, 10, 50))
    records[0]["train_fit"] = {"t2v_r1": 70, "itc_t2v_r1": 80}
    records[1]["train_fit"] = {"t2v_r1": 50, "itc_t2v_r1": 60}
    records[0].update(caption_cnn={"seconds": 60.0}, pretrain={"seconds": 120.0})  # both stages before finetuning
    for record in records:
        (runs / f"{record['mode']}_s{record['seed']}.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    payload = learn.merge(out, runs, tmp_path / "work")
    rows = learn.table_rows(payload["records"])
    assert [r[0] for r in rows][:4] == ["scratch_sparse", "scratch_dense", "image_text", "image_text"]
    mean = rows[4]
    assert mean[0] == "image-text pretrained, sparse: mean" and mean[2] == 50 and mean[6] == 80
    assert mean[7:9] == [60, 70] and rows[0][7:9] == [None, None]  # training-set fit: means, blank where not scored
    assert rows[0][11] == 90.0 and len(mean) == len(rows[0])  # median training speed: contention shows per row
    assert rows[2][12] == 3.0 and rows[0][12] == 0.0  # pretraining minutes, every stage counted
    verdicts = "\n".join(payload["verdicts"])
    assert "less is more (same budget): sparse R@1 20.0 / MC 70.0 against dense 10.0 / 50.0: holds" in verdicts
    assert "image-text pretrained helps: R@1 50.0 / MC 80.0 against 20.0 / 70.0 from scratch: holds" in verdicts
    assert "met on seeds [0] of [0, 11]" in verdicts
    assert (out / "learn.png").stat().st_size > 0 and json.loads((out / "learn.json").read_text())
    assert "held-out TEST split" in capsys.readouterr().out


def test_diagnostics_are_filled_only_from_the_run_a_record_describes(learn, tmp_path, capsys):
    records = tmp_path / "records"
    records.mkdir()
    record = {**_record("scratch_sparse", 0, 20, 70), "preset": "synthetic_tiny",
              "command": "jobs/train.py --config synthetic_tiny --set optim.num_epochs=2"}
    (records / "scratch_sparse_s0.json").write_text(json.dumps(record))
    run_dir = tmp_path / "work" / "runs" / "learn_scratch_sparse_s0"
    run_dir.mkdir(parents=True)
    (run_dir / "final_metrics.json").write_text(json.dumps({"test": {"t2v_r1": 99.0}, "step": 9}))  # a later run
    learn.fill_diagnostics(records, tmp_path / "work", tmp_path / "out")
    out = capsys.readouterr().out
    assert "no longer holds this record's run; train_fit, grounding, colour_only_r1, cnn_probe left out" in out
    assert not set(DIAGNOSTICS) & set(json.loads((records / "scratch_sparse_s0.json").read_text()))


def test_records_hold_paths_relative_to_the_workdir_the_repository_and_the_output(learn, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    record = {"command": f"{learn.REPO}/jobs/train.py --storage-path {work}/runs --set data.root={work}/corpus_s0 "
                         "--set optim.lr=1e-3",
              "stopped": f"failed (exit 1; see {out}/learn_runs/x_s0.log)",
              "final_metrics": {"exported": f"{work}/runs/learn_x_s0/best", "curve": [{"step": 1}]},
              "pretrain": {"corpus": str(work)}, "other": f"{work}2/corpus"}
    path = tmp_path / "x_s0.json"
    learn.write_record(path, record, work, out)
    written = json.loads(path.read_text())
    assert written["command"] == "jobs/train.py --storage-path runs --set data.root=corpus_s0 --set optim.lr=1e-3"
    assert written["stopped"] == "failed (exit 1; see learn_runs/x_s0.log)"
    assert written["final_metrics"] == {"exported": "runs/learn_x_s0/best", "curve": [{"step": 1}]}
    assert written["pretrain"] == {"corpus": "."} and written["other"] == f"{work}2/corpus"  # not under the workdir
    assert written["paths"] == learn.PATHS_NOTE
    learn.write_record(path, {"stopped": "see rel_out/learn_runs/x_s0.log"}, work, Path("rel_out"))  # --output relative
    assert json.loads(path.read_text())["stopped"] == "see learn_runs/x_s0.log"
    elsewhere = tmp_path / "elsewhere"  # the workdir, moved or on another machine
    assert learn.corpus_root(written, elsewhere) == elsewhere / "corpus_s0"
    assert learn.corpus_root(record, elsewhere) == work / "corpus_s0"  # an absolute path, as older records hold
    assert learn.corpus_root({"command": "jobs/train.py"}, elsewhere) is None


def test_fill_diagnostics_reads_a_records_paths_under_the_workdir_and_writes_them_back_relative(learn, tmp_path,
                                                                                                 monkeypatch):
    work, out, records = tmp_path / "work", tmp_path / "out", tmp_path / "records"
    records.mkdir()
    record = {**_record("image_text", 0, 20, 70), "preset": "synthetic_tiny", "pretrain": {"corpus": f"{work}/stills"},
              "command": f"{learn.REPO}/jobs/train.py --set data.root={work}/corpus_s0 "
                         f"--set model.init_checkpoint={work}/runs/learn_image_text_pretrain_s0/best --set optim.lr=1"}
    learn.write_record(records / "image_text_s0.json", record, work, out)
    written = json.loads((records / "image_text_s0.json").read_text())
    calls = []

    def fill_run(name, rec, run_dir, sets):
        calls.append((run_dir, sets))
        rec["train_fit"] = {"t2v_r1": 1.0}
        return True

    def fill_words(name, pretrain, pretrain_dir, stills):
        calls.append((pretrain_dir, stills))
        return False

    monkeypatch.setattr(learn, "fill_run_diagnostics", fill_run)
    monkeypatch.setattr(learn, "fill_word_grounding", fill_words)
    moved = tmp_path / "moved"
    learn.fill_diagnostics(records, moved, out)
    assert calls == [(moved / "runs" / "learn_image_text_s0",
                      [f"data.root={moved / 'corpus_s0'}",
                       f"model.init_checkpoint={moved / 'runs' / 'learn_image_text_pretrain_s0' / 'best'}",
                       "optim.lr=1"]),
                     (moved / "runs" / "learn_image_text_pretrain_s0", moved / "stills")]
    filled = json.loads((records / "image_text_s0.json").read_text())
    assert filled == {**written, "train_fit": {"t2v_r1": 1.0}}  # still relative: nothing names `moved`


def test_grounding_table_has_a_row_per_diagnosed_record(learn):
    records = [_record("scratch_sparse", 0, 20, 70), _record("image_text", 0, 30, 80)]
    records[1]["grounding"] = {"cross": {"color": 98.0, "shape": 55.0}, "dual": {"color": 99.0, "shape": 80.0,
                                                                                 "direction": 90.0}}
    records[1]["colour_only_r1"] = 15.0
    assert learn.grounding_rows(records) == [["image_text", 0, 98.0, 55.0, None, 99.0, 80.0, 90.0, 15.0]]


def test_probe_table_has_a_row_per_record_with_a_cnn_probe(learn):
    start, chosen = {"color": 20.0, "shape": 30.0, "direction": 40.0}, {"color": 90.0, "shape": 80.0, "direction": 70.0}
    records = [{"label": "m", "seed": 0, "cnn_probe": {"start": start, "chosen": chosen}}, {"label": "n"}]
    rows = learn.probe_rows(records)
    assert rows == [["m", 0, *start.values(), *chosen.values()]]


def test_image_text_words_pretrains_at_the_pretrained_cnn_lr_and_set_overrides_it(learn, tmp_path, monkeypatch):
    commands = []

    def watch(run, num_workers, t0, deadline, label):
        commands.append(run.command(num_workers))
        (run.directory / "best").mkdir(parents=True)
        (run.directory / "best" / "model.safetensors").write_bytes(b"")
        return {"stopped": "schedule finished"}

    monkeypatch.setattr(learn.Run, "watch", watch)
    args = learn.parse_args(["--output", str(tmp_path), "--set", "optim.lr=1e-3"])
    for name in ("image_text", "image_text_words"):
        learn.image_text_checkpoint(name, tmp_path / "stills", tmp_path, args, 0.0, 1.0, ["optim.num_epochs=2"])
    sets = [[c[i + 1] for i, a in enumerate(c) if a == "--set"] for c in commands]
    assert "optim.cnn_lr=5e-5" not in sets[0]  # image_text: the CNN from random weights keeps the preset's lr
    assert sets[1].index("optim.cnn_lr=5e-5") < sets[1].index("optim.lr=1e-3") < sets[1].index("optim.num_epochs=2")


@pytest.mark.parametrize("mode, preset", [("caption_cnn", "synthetic_tiny"), ("recipe", "synthetic_recipe")])
def test_caption_word_cnn_modes_finetune_from_it_with_no_image_text_stage(learn, tmp_path, monkeypatch, mode, preset):
    stills, root = tmp_path / "stills", tmp_path / "corpus"
    for d in (stills, root):
        (d / "tokenizer").mkdir(parents=True)
        (d / "tokenizer" / "vocab.txt").write_text("[PAD]\nred\n")
    launched = []

    def watch(run, num_workers, t0, deadline, label):
        launched.append(run.command(num_workers))
        return {"stopped": "schedule finished", "curve": [{"step": 10, "wall_s": 1.0, "t2v_r1": 5.0}]}

    monkeypatch.setattr(learn.Run, "watch", watch)
    monkeypatch.setattr(learn, "prepare_images", lambda *a: stills)
    monkeypatch.setattr(learn, "caption_cnn", lambda s, w, a: (tmp_path / "cnn", {"seconds": 150.0}))
    monkeypatch.setattr(learn, "test_metrics", lambda *a: ({"t2v_r1": 5.0}, 10))
    for diagnostic in ("train_fit", "grounding", "colour_only_r1", "cnn_probe"):
        monkeypatch.setattr(learn, diagnostic, lambda *a: None)
    args = learn.parse_args(["--output", str(tmp_path), "--modes", mode, "--seed", "3"])
    record = learn.run_mode(mode, root, tmp_path, args)
    assert len(launched) == 1 and "train.py" in " ".join(launched[0])  # no jobs/pretrain.py stage
    assert launched[0][launched[0].index("--config") + 1] == preset
    sets = [launched[0][i + 1] for i, a in enumerate(launched[0]) if a == "--set"]
    assert f"model.init_checkpoint={tmp_path / 'cnn'}" in sets and "optim.num_epochs=160.0" in sets
    assert not any(s.startswith("optim.cnn_lr") for s in sets)  # the preset's CNN learning rate
    assert learn.pretrain_minutes(record) == 2.5 and record["wall_s"] >= 150.0  # the CNN's minutes count


def test_rerank_table_has_a_row_per_record_with_search_figures_and_a_mean(learn):
    figures = {k: 50.0 for k in learn.RERANK_KEYS}
    records = [{"mode": "recipe", "label": "R", "seed": s, "test": {**figures, "rerank8_t2v_r1": 60.0 + s}}
               for s in (0, 1)]
    records.append({"mode": "caption_cnn", "label": "C", "seed": 0, "test": {"t2v_r1": 1.0}})  # no search figures
    rows = learn.rerank_rows(records)
    assert [r[:2] for r in rows] == [["R", 0], ["R", 1], [f"{learn.MODES['recipe'].label}: mean", "all"]]
    assert rows[2][2 + learn.RERANK_KEYS.index("rerank8_t2v_r1")] == 60.5
