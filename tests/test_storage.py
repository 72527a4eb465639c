"""Tests of clipbert/storage.py and of training with `--storage-path s3://...`, against an S3-compatible server
(moto) that the tests start on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipbert import storage
from clipbert.training.run import check_storage

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "clipbert-test"


@pytest.fixture(scope="module")
def s3(free_port):
    """A moto S3 server on 127.0.0.1 with one bucket; this process (and its children) pointed at it."""
    moto_server = pytest.importorskip("moto.server")
    import pyarrow.fs as pafs

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], region="us-east-1",
                          allow_bucket_creation=True).create_dir(BUCKET)
        yield env
    server.stop()


def test_local_paths_and_uris_are_written_through_the_same_calls(s3, tmp_path):
    for base in (str(tmp_path / "runs"), f"s3://{BUCKET}/runs"):
        check_storage(base)
        (tmp_path / "src" / "sub").mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / "a.bin").write_bytes(b"weights")
        (tmp_path / "src" / "sub" / "b.txt").write_text("events")
        storage.write_bytes(storage.join(base, "run", "best", "stale.bin"), b"old")
        storage.replace_dir(tmp_path / "src", storage.join(base, "run", "best"), ("a.bin",))
        storage.upload_dir(tmp_path / "src", storage.join(base, "run", "tb"))
        storage.write_bytes(storage.join(base, "run", "final.json"), b'{"ok": 1}')
        fsys, inner = storage.resolve(storage.join(base, "run"))
        import pyarrow.fs as pafs

        files = sorted(i.path[len(inner) + 1:] for i in fsys.get_file_info(pafs.FileSelector(inner, recursive=True))
                       if i.type == pafs.FileType.File)
        assert files == ["best/a.bin", "final.json", "tb/a.bin", "tb/sub/b.txt"], base  # stale.bin is gone
        assert storage.read_bytes(storage.join(base, "run", "final.json")) == b'{"ok": 1}'
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()


def test_an_unreachable_bucket_is_refused_in_one_line(s3):
    with pytest.raises(PermissionError, match=r"^--storage-path s3://no-such-bucket/runs is not writable: .*") as e:
        check_storage("s3://no-such-bucket/runs")
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_training_to_an_s3_storage_path_writes_everything_to_the_bucket(s3, tiny_corpus, tmp_path):
    """jobs/train.py with --storage-path s3://...: checkpoints, best/, final_metrics.json and TensorBoard events
    land in the bucket, nothing in a local directory named 's3:', and best/ holds the chosen checkpoint's weights."""
    import pyarrow.fs as pafs

    uri = f"s3://{BUCKET}/runs"
    cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), "--config", "synthetic_tiny",
           "--set", f"data.root={tiny_corpus.root}", "--set", "optim.batch_size=4", "--set", "optim.num_epochs=1",
           "--set", "train.eval_every_steps=2", "--num-workers", "1", "--num-cpus", "2",
           "--storage-path", uri, "--name", "s3run"]
    env = {**os.environ, **s3, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]
    final = json.loads(storage.read_bytes(f"{uri}/s3run/final_metrics.json"))
    assert final["exported"] == f"{uri}/s3run/best" and final["step"] == final["val"]["step"]
    assert final["checkpoint"].startswith(f"{BUCKET}/runs/s3run/checkpoint_") and final["test"]["t2v_r1"] >= 0
    fsys, inner = storage.resolve(f"{uri}/s3run")
    files = [i.path[len(inner) + 1:] for i in fsys.get_file_info(pafs.FileSelector(inner, recursive=True))
             if i.type == pafs.FileType.File]
    assert sorted(f for f in files if f.startswith("best/")) == ["best/config.json", "best/model.safetensors",
                                                                 "best/rerank.json"]
    weight = json.loads(storage.read_bytes(f"{uri}/s3run/best/rerank.json"))["fuse_weight"]
    assert weight == final["val"]["fuse_weight"] and final["test"]["fuse_weight"] == weight  # test takes val's w
    assert any(f.startswith("tensorboard/events.out.tfevents.") for f in files), files
    chosen = final["checkpoint"][len(f"{BUCKET}/runs/s3run/"):]
    assert storage.read_bytes(f"{uri}/s3run/best/model.safetensors") == \
        storage.read_bytes(f"{uri}/s3run/{chosen}/model.safetensors")
    assert not (tmp_path / "s3:").exists() and not list(tmp_path.iterdir())  # nothing written locally
