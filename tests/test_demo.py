"""Tests for the tour's own arithmetic (jobs/demo.py): how many event attributes two videos share."""

import pytest

from jobs.demo import attribute_agreement


def _video(*events: tuple[str, str, str]) -> dict:
    return {"events": [{"color": c, "shape": s, "direction": d, "lane": 0.5} for c, s, d in events]}


@pytest.mark.parametrize("other, shared", [
    (_video(("red", "circle", "left"), ("blue", "square", "up")), 6),
    (_video(("red", "circle", "right"), ("blue", "square", "up")), 5),
    (_video(("blue", "square", "up"), ("red", "circle", "left")), 0),  # the same events in the other order
    (_video(("green", "cross", "down"), ("yellow", "triangle", "right")), 0),
    (_video(("red", "square", "down"), ("green", "square", "up")), 3),
])
def test_attribute_agreement_counts_matches_event_by_event(other, shared):
    query = _video(("red", "circle", "left"), ("blue", "square", "up"))
    assert attribute_agreement(query, other) == shared


@pytest.mark.slow
def test_the_tour_runs_every_step_on_a_tiny_corpus_and_a_rerun_skips_what_exists(ray_local, tmp_path):
    """jobs/demo.py end to end at toy sizes (24 videos, 40 stills, 2 finetuning steps), joining the session's Ray:
    every step runs, the held-out evaluation and the example queries print, the contact sheet and the index exist;
    run again, every step with an output is skipped."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "jobs" / "demo.py"), "--workdir", str(tmp_path / "demo"), "--videos", "24",
           "--val-videos", "4", "--test-videos", "4", "--max-duration", "3", "--stills", "40", "--pretrain-minutes", "0.05",
           "--epochs", "2", "--rerank", "2", "--address", ray_local.address]
    first = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    out = first.stdout
    for step in ("synthesize videos", "preprocess the videos (Ray Data)", "pretrain the CNN on captions",
                 "finetune (Ray Train)", "build the index (Ray Data)", "held-out evaluation", "example queries"):
        assert f". {step}\n" in out, out[-4000:]
    assert "videos: 24 ok, 0 failed" in out and "held-out word recall" in out
    assert "re-rank top 2   R@1" in out and out.count("<- the captioned video") == 3
    assert (tmp_path / "demo" / "index" / "index.json").is_file()
    assert "data:image/jpeg;base64," in (tmp_path / "demo" / "contact_sheet.html").read_text()

    again = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    skipped = [line for line in again.stdout.splitlines() if line.endswith("(done before: skipped)")]
    assert len(skipped) == 8, again.stdout[-4000:]  # synthesis x2, Ray, preprocessing x2, CNN, finetune, index
