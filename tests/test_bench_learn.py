"""Tests of bench/learn.py's bookkeeping: records merged over sessions into one table with per-seed and mean rows,
the verdicts on the paper's claims, and the budget-stopped run scored from its best kept checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_bench


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
    payload = learn.merge(out, runs)
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


def test_a_budget_stopped_run_is_scored_from_its_best_kept_checkpoint(learn, tmp_path):
    for step in (100, 200, 300):
        d = tmp_path / f"checkpoint_{step}"
        d.mkdir()
        torch.save({"step": step}, d / "train_state.pt")
    curve = [{"step": 100, "t2v_r1": 10.0}, {"step": 200, "t2v_r1": 30.0}, {"step": 300, "t2v_r1": 20.0},
             {"step": 400, "t2v_r1": 50.0}]  # step 400's checkpoint was not kept
    assert learn.best_kept_checkpoint(tmp_path, curve, "t2v_r1") == tmp_path / "checkpoint_200"
    assert learn.best_kept_checkpoint(tmp_path / "none", curve, "t2v_r1") is None


def test_diagnostics_are_filled_only_from_the_run_a_record_describes(learn, tmp_path, capsys):
    records = tmp_path / "records"
    records.mkdir()
    record = {**_record("scratch_sparse", 0, 20, 70), "preset": "synthetic_tiny",
              "command": "jobs/train.py --config synthetic_tiny --set optim.num_epochs=2"}
    (records / "scratch_sparse_s0.json").write_text(json.dumps(record))
    run_dir = tmp_path / "work" / "runs" / "learn_scratch_sparse_s0"
    run_dir.mkdir(parents=True)
    (run_dir / "final_metrics.json").write_text(json.dumps({"test": {"t2v_r1": 99.0}, "step": 9}))  # a later run
    learn.fill_diagnostics(records, tmp_path / "work")
    out = capsys.readouterr().out
    assert "no longer holds this record's run; train_fit, grounding, colour_only_r1, cnn_probe left out" in out
    assert not set(learn.DIAGNOSTICS) & set(json.loads((records / "scratch_sparse_s0.json").read_text()))


def test_word_grounding_is_filled_only_from_the_pretraining_a_record_describes(learn, tmp_path, capsys):
    pretrain = {"final_metrics": {"val": {"mlm_acc": 60.0}}, "corpus": str(tmp_path / "stills")}
    pretrain_dir = tmp_path / "pretrain"
    assert not learn.fill_word_grounding("image_text_s0.json", pretrain, pretrain_dir)  # no run there
    pretrain_dir.mkdir()
    (pretrain_dir / "final_metrics.json").write_text(json.dumps({"val": {"mlm_acc": 70.0}}))  # another run
    assert not learn.fill_word_grounding("image_text_s0.json", pretrain, pretrain_dir)
    assert capsys.readouterr().out.count("no longer holds this record's pretraining; word grounding left out") == 2
    assert "word_grounding" not in pretrain
    done = {**pretrain, "word_grounding": {"color": 75.0}}
    assert not learn.fill_word_grounding("image_text_s0.json", done, pretrain_dir)  # already there: untouched
    assert done["word_grounding"] == {"color": 75.0}


def test_only_attribute_aligns_the_events_the_way_that_differs_least(learn):
    red, blue = ("red", "circle", "left"), ("blue", "square", "up")
    assert learn.only_attribute([red, blue], [("green", "circle", "left"), blue]) == "color"
    assert learn.only_attribute([red, blue], [blue, ("red", "cross", "left")]) == "shape"  # event order swapped
    assert learn.only_attribute([red, blue], [("red", "circle", "up"), ("blue", "square", "down")]) == "direction"
    assert learn.only_attribute([red, blue], [("green", "cross", "left"), blue]) == ""  # colour and shape
    assert learn.only_attribute([red, blue], [blue, red]) == ""  # the same events


def test_attribute_only_r1_counts_the_ties_that_the_blind_attributes_leave(learn, tmp_path):
    from clipbert.synthetic.corpus import synthesize_corpus

    root = tmp_path / "corpus"
    info = synthesize_corpus(root, n_videos=12, seed=3, val_videos=1, test_videos=6, sizes=((32, 32),),
                             min_duration=0.2, max_duration=0.3)
    test = [v for v in info.videos if v.split == "test"]
    colours = [frozenset(e.color for e in v.events) for v in test]  # the two colours of a video always differ
    expected = 100.0 * sum(1 / colours.count(c) for c in colours) / len(test)
    assert expected < 100.0  # this seed's test videos share a colour pair
    assert learn.attribute_only_r1(root, ("color",)) == pytest.approx(expected)
    assert learn.attribute_only_r1(root, ("color", "shape", "direction")) == 100.0  # unique event pairs
    pairs = learn.one_attribute_pairs(root)
    assert set(pairs) == {"color", "shape", "direction"}
    assert all(n % 2 == 0 for n in pairs.values())  # each pair of videos counts once as either's wrong video
    ties = sum(colours.count(c) - 1 for c in colours)  # ordered pairs of test videos with the same two colours
    assert pairs["shape"] + pairs["direction"] <= ties


def test_grounding_table_has_a_row_per_diagnosed_record(learn):
    records = [_record("scratch_sparse", 0, 20, 70), _record("image_text", 0, 30, 80)]
    records[1]["grounding"] = {"cross": {"color": 98.0, "shape": 55.0}, "dual": {"color": 99.0, "shape": 80.0,
                                                                                 "direction": 90.0}}
    records[1]["colour_only_r1"] = 15.0
    assert learn.grounding_rows(records) == [["image_text", 0, 98.0, 55.0, None, 99.0, 80.0, 90.0, 15.0]]


class _ConstantModel:
    """A stand-in pretrained model whose masked-word logits favour one token id wherever it is asked."""

    def __init__(self, favoured: int, vocab: int):
        self.logits = torch.zeros(1, vocab)
        self.logits[0, favoured] = 1.0

    def eval(self):
        return self

    def encode_grid(self, frames):
        return torch.zeros(1, 1, 3, 3, 4)

    def pretrain_logits(self, grid, ids, mask, picked):
        assert int(picked.sum()) == 1 and int(ids[picked]) != 0  # one masked position, not padding
        return self.logits, None


def test_word_grounding_masks_each_attribute_word_and_predicts_among_that_attributes_words(learn, tiny_stills,
                                                                                           monkeypatch):
    import clipbert.checkpoint
    from clipbert.synthetic.vocabulary import ATTRIBUTES, tokenize_words
    from clipbert.text import cached_tokenizer

    tok = cached_tokenizer(str(tiny_stills / "tokenizer"))
    square = tok.convert_tokens_to_ids("square")
    monkeypatch.setattr(clipbert.checkpoint, "load_checkpoint", lambda path: (_ConstantModel(square, len(tok)), None))
    accuracy = learn.word_grounding(tiny_stills / "unused", tiny_stills)
    captions = [json.loads(line)["caption"] for line in (tiny_stills / "txt" / "pretrain_val.jsonl").open()]
    said = {a: [w for c in captions for w in tokenize_words(c) if w in values] for a, values in ATTRIBUTES.items()}
    # "square" wins among the shapes; colours and directions get equal logits, so the first word of each wins
    expected = {"color": said["color"].count(ATTRIBUTES["color"][0]), "shape": said["shape"].count("square"),
                "direction": said["direction"].count(ATTRIBUTES["direction"][0])}
    assert accuracy == pytest.approx({a: 100.0 * n / len(said[a]) for a, n in expected.items()})


def test_event_clips_carry_their_events_and_the_probe_reads_the_grid(learn, tiny_corpus, monkeypatch):
    from clipbert.checkpoint import build_model
    from clipbert.synthetic.corpus import load_corpus

    cfg = tiny_corpus.config("synthetic_tiny")
    clips, labels = learn.event_clips(cfg, "test")
    videos = [v for v in load_corpus(tiny_corpus.root).videos if v.split == "test"]
    assert clips.shape == (2 * len(videos), 1, 2, 3, cfg.model.img_size, cfg.model.img_size)
    assert labels == [e.key() for v in videos for e in v.events]  # event 1 then event 2 of each video
    torch.manual_seed(0)
    model, _ = build_model(cfg.model)
    train = learn.event_clips(cfg, "train")
    probe = learn.linear_probe(model, train, (clips, labels))
    assert set(probe) == {"color", "shape", "direction"} and all(0 <= v <= 100 for v in probe.values())
    # a grid that carries nothing but a constant tells no attribute apart beyond the majority guess
    monkeypatch.setattr(model, "encode_grid", lambda x: torch.ones(len(x), 1, 3, 3, 8))
    blind = learn.linear_probe(model, train, (clips, labels))
    majority = {a: 100 * max(sum(lab[k] == v for lab in labels) for v in set(lab[k] for lab in labels)) / len(labels)
                for k, a in enumerate(("color", "shape", "direction"))}
    assert all(blind[a] <= majority[a] + 1e-6 for a in blind)
    rows = learn.probe_rows([{"label": "m", "seed": 0, "cnn_probe": {"start": probe, "chosen": blind}}, {"label": "n"}])
    assert rows == [["m", 0, *probe.values(), *blind.values()]]


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
