"""End-to-end tests of the Ray Data preprocessing pipeline (pipelines/preprocess.py, jobs/preprocess.py)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipbert.data import frames as fs
from clipbert.synthetic.encode import write_video
from jobs import preprocess as job
from pipelines.decode import resize_frame, stored_indices
from pipelines.preprocess import run_preprocess

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _moving_square(n, h, w, seed=0):
    """(n, h, w, 3) uint8: a coloured square sliding over a smooth gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 96)], -1).astype(np.uint8)
    out = np.repeat(bg[None], n, 0)
    colour, side = rng.integers(0, 255, 3), max(4, min(h, w) // 4)
    for t in range(n):
        x = (t * 5) % max(1, w - side)
        out[t, h // 3 : h // 3 + side, x : x + side] = colour
    return out


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """A directory with every kind of awkward input, and the expected outcome of each."""
    d = tmp_path_factory.mktemp("videos")
    write_video(d / "good.mp4", _moving_square(45, 360, 640), fps=30)  # resized to 448 wide
    write_video(d / "nested" / "good2.mp4", _moving_square(20, 120, 160, seed=1), fps=10)
    write_video(d / "anim.gif", _moving_square(12, 64, 80, seed=2), fps=10, codec="gif")
    write_video(d / "av1.mp4", _moving_square(16, 64, 64, seed=3), fps=8, codec="libsvtav1")
    write_video(d / "one_frame.mp4", _moving_square(1, 64, 64, seed=4), fps=25)
    write_video(d / "blink.mp4", _moving_square(3, 64, 64, seed=5), fps=30)  # 0.1 s < one 0.25 s interval
    full = d / "full_faststart.mp4"
    write_video(full, _moving_square(120, 120, 160, seed=6), fps=30, faststart=True)
    (d / "truncated_front.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    write_video(d / "moov_end.mp4", _moving_square(60, 120, 160, seed=7), fps=30)
    data = (d / "moov_end.mp4").read_bytes()
    (d / "truncated_end.mp4").write_bytes(data[: len(data) // 2])
    (d / "moov_end.mp4").unlink()
    (d / "zero.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    (d / "notes.txt").write_text("not a video")
    (d / "labels.json").write_text("{}")
    expected = {
        "good": ("ok", 6), "nested/good2": ("ok", 8), "anim": ("ok", 5), "av1": ("ok", 8),
        "one_frame": ("ok", 1), "blink": ("ok", 1), "truncated_front": ("ok", None),
        "truncated_end": ("failed", 0), "zero": ("failed", 0), "random": ("failed", 0),
    }
    return d, expected


@pytest.fixture(scope="module")
def store(shared_ray, bad_inputs, tmp_path_factory):
    shared_ray.local()
    out = tmp_path_factory.mktemp("store")
    summary = run_preprocess(str(bad_inputs[0]), str(out), videos_per_shard=3)
    return out, summary


def test_every_input_gets_one_row_with_the_right_status(store, bad_inputs):
    out, summary = store
    rows = {r["video_id"]: r for r in fs.read_manifest(out).to_pylist()}
    assert sorted(rows) == sorted(bad_inputs[1])  # non-video files are not inputs
    for video_id, (status, n_frames) in bad_inputs[1].items():
        row = rows[video_id]
        assert row["status"] == status, (video_id, row["error"])
        if n_frames is not None:
            assert row["num_frames"] == n_frames, video_id
        if status == "failed":
            assert row["error"] and row["num_frames"] == 0
    assert summary.videos_ok == 7 and summary.videos_failed == 3


@pytest.mark.parametrize("video_id, reason", [
    ("zero", "empty file (0 bytes)"),
    ("random", "not decodable"),
    ("truncated_end", "not decodable"),
])
def test_failure_reasons_are_readable(store, video_id, reason):
    row = next(r for r in fs.read_manifest(store[0]).to_pylist() if r["video_id"] == video_id)
    assert row["error"].startswith(reason), row["error"]
    assert "\n" not in row["error"] and len(row["error"]) < 400


def test_truncated_file_keeps_its_decodable_part_with_a_warning(store):
    row = next(r for r in fs.read_manifest(store[0]).to_pylist() if r["video_id"] == "truncated_front")
    assert 0 < row["num_frames"] < 16  # 4 s at 4 fps had 16 frames; about half survive
    assert row["error"].startswith("truncated or corrupt: kept"), row["error"]


def test_metadata_of_stored_videos(store):
    rows = {r["video_id"]: r for r in fs.read_manifest(store[0]).to_pylist()}
    good = rows["good"]
    assert (good["width"], good["height"], good["src_width"], good["src_height"]) == (448, 252, 640, 360)
    assert good["fps"] == 4.0 and good["src_fps"] == 30.0 and good["src_frames"] == 45
    assert rows["anim"]["fps"] == 4.0 and rows["anim"]["width"] == 80  # small frames are never upscaled
    reader = fs.FrameStore(store[0])
    for video_id in ["good", "anim", "av1", "one_frame"]:
        frames = reader.get(video_id, range(reader.n_stored(video_id)))
        assert frames.shape == (rows[video_id]["num_frames"], rows[video_id]["height"], rows[video_id]["width"], 3)


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("video_id", ["good", "nested/good2"])
def test_round_trip_matches_a_direct_decode(store, bad_inputs, video_id):
    """Stored frames equal decord's frames at the stored indices, resized, up to JPEG error."""
    import decord  # after PyAV (clipbert.synthetic.encode): see pipelines/decode.py on the import order

    reader = fs.FrameStore(store[0])
    vr = decord.VideoReader(str(bad_inputs[0] / f"{video_id}.mp4"), num_threads=1)
    keep = stored_indices(len(vr), vr.get_avg_fps(), 4.0)
    direct = np.stack([resize_frame(f, 448) for f in vr.get_batch(keep.tolist()).asnumpy()])
    stored = reader.get(video_id, range(len(keep)))
    assert stored.shape == direct.shape
    assert _psnr(stored, direct) >= 35.0


def test_list_file_with_a_missing_path_becomes_a_failed_row(ray_local, bad_inputs, tmp_path):
    listed = [bad_inputs[0] / "good.mp4", bad_inputs[0] / "gone.mp4"]
    list_file = tmp_path / "videos.txt"
    list_file.write_text("# inputs\n" + "\n".join(map(str, listed)) + "\n")
    run_preprocess(str(list_file), str(tmp_path / "out"))
    rows = {r["video_id"]: r for r in fs.read_manifest(tmp_path / "out").to_pylist()}
    assert rows["good"]["status"] == "ok"
    assert rows["gone"]["status"] == "failed" and rows["gone"]["error"] == "file not found"


def test_resume_with_other_options_is_refused(ray_local, store, bad_inputs):
    with pytest.raises(ValueError, match="jpeg_quality: store has 90, asked 50"):
        run_preprocess(str(bad_inputs[0]), str(store[0]), fs.StoreOptions(jpeg_quality=50))


def test_job_exit_codes(ray_local, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "zero.mp4").write_bytes(b"")
    args = ["--videos", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--num-cpus", "1"]
    assert job.main(args) == 1  # nothing succeeded
    assert job.main(args) == 1  # nor when resuming a store whose videos all failed
    assert job.main(["--videos", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o2")]) == 2


def _run_job(videos, out, address: str, **popen):
    """jobs/preprocess.py in a process group of its own, joining the Ray at `address`."""
    cmd = [sys.executable, str(ROOT / "jobs" / "preprocess.py"), "--videos", str(videos), "--output", str(out),
           "--videos-per-shard", "1", "--concurrency", "1", "--address", address]
    return subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **popen)


def _store_contents(root):
    manifest = fs.read_manifest(root).drop(["shard"]).to_pylist()
    reader = fs.FrameStore(root)
    frames = {v: reader.get_jpeg(v, range(reader.n_stored(v))) for v in reader.ids()}
    return manifest, frames


def _settled_shard_count(out, quiet_s: float = 2.0, limit_s: float = 30.0) -> int:
    """Finished shards under `out` once no new one has appeared for `quiet_s` seconds (at most `limit_s`)."""
    count, changed, deadline = -1, time.time(), time.time() + limit_s
    while time.time() < deadline:
        now = len(list(out.glob("shards/*/rows.parquet")))
        if now != count:
            count, changed = now, time.time()
        elif time.time() - changed >= quiet_s:
            break
        time.sleep(0.05)
    return count


def test_resume_after_a_killed_run_equals_a_clean_run(ray_local, tmp_path):
    videos = tmp_path / "videos"
    for i in range(10):
        write_video(videos / f"v{i}.mp4", _moving_square(60, 96, 128, seed=i), fps=30)
    run_preprocess(str(videos), str(tmp_path / "clean"), videos_per_shard=1, concurrency=1)  # what the job runs

    out = tmp_path / "resumed"
    killed = _run_job(videos, out, ray_local.address)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("shards/*/rows.parquet"))) < 3:
        time.sleep(0.01)  # the shards of these small videos are written within about 0.2 s of each other
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    done_before = _settled_shard_count(out)  # a Ray worker outside the killed group may finish one more shard
    assert 3 <= done_before < 10, "the run should have been killed part way"
    assert not (out / fs.MANIFEST_FILE).exists()

    resumed = _run_job(videos, out, ray_local.address)
    log = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, log[-2000:]
    assert f"{done_before} already stored" in log or f"{10 - done_before} to do" in log
    assert _store_contents(out) == _store_contents(tmp_path / "clean")


# ------------------------------------------------------------------------------------- unusual and hostile inputs
@pytest.fixture(scope="module")
def hostile_inputs(tmp_path_factory):
    """A directory with a non-UTF-8 file name, a symlink back up the tree, links to listed files and directories,
    a broken link, an audio-only file, a variable-frame-rate and a rotated video."""
    from test_decode import write_timed_video

    d = tmp_path_factory.mktemp("hostile")
    write_video(d / "plain.mp4", _moving_square(20, 64, 96), fps=10)
    write_video(d / "sub" / "deep.mp4", _moving_square(20, 64, 96, seed=1), fps=10)
    shutil.copy(d / "plain.mp4", os.fsencode(d) + b"/caf\xe9.mp4")  # Latin-1 bytes: not UTF-8
    os.symlink("..", d / "sub" / "up")  # followed, this would list every video again, about forty levels deep
    os.symlink("sub", d / "sub_again")
    os.symlink("plain.mp4", d / "plain_link.mp4")
    os.symlink(d / "gone.mp4", d / "broken.mp4")
    av = pytest.importorskip("av")
    with av.open(str(d / "song.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    write_timed_video(d / "vfr.mp4", [i * 0.1 for i in range(10)] + [0.9 + 0.3 * (i + 1) for i in range(10)])
    write_timed_video(d / "phone.mp4", np.arange(8) / 8, rotation=-90)
    return d


def test_hostile_inputs_each_get_one_row_and_the_rest_is_stored(ray_local, hostile_inputs, tmp_path, capsys):
    out = tmp_path / "store"
    assert job.main(["--videos", str(hostile_inputs), "--output", str(out), "--videos-per-shard", "2"]) == 0
    rows = {r["video_id"]: r for r in fs.read_manifest(out).to_pylist()}
    assert sorted(rows) == ["broken", "caf\\xe9", "phone", "plain", "song", "sub/deep", "vfr"]  # each file once
    status = {v: (r["status"], r["error"].split(" (")[0]) for v, r in rows.items()}
    assert status == {
        "broken": ("failed", "file not found"), "song": ("failed", "no video stream"),
        "caf\\xe9": ("failed", "file name is not valid UTF-8"),
        "phone": ("ok", ""), "plain": ("ok", ""), "sub/deep": ("ok", ""), "vfr": ("ok", ""),
    }
    assert rows["caf\\xe9"]["source"] == f"{hostile_inputs}/caf\\xe9.mp4"
    assert (rows["vfr"]["num_frames"], rows["vfr"]["duration_s"]) == (16, 4.0)  # 3.9 s of frames, timed right
    assert (rows["phone"]["width"], rows["phone"]["height"]) == (64, 96)  # portrait stays portrait
    assert "videos: 4 ok, 3 failed" in capsys.readouterr().out
