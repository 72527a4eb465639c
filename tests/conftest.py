"""Shared fixtures: a tiny synthetic corpus with its tokenizer and frame store (built once), and a local Ray."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import av  # noqa: F401  (PyAV must load before decord: see pipelines/decode.py)
import pytest

from clipbert.data import frames as fs
from clipbert.config import Config, load_config
from clipbert.ray_init import init_ray, state_api_env

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # CLI clients (ray job submit) and the drivers agree

# Ray Train's controller polls its workers every 0.5 s instead of 2 in every Ray the tests start or launch: a tiny
# run's end, or a killed worker, is seen that much sooner; nothing else changes.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@dataclasses.dataclass(frozen=True)
class TinyCorpus:
    """A synthesized corpus (root/txt/*.jsonl, root/videos) with root/tokenizer and root/frames."""

    root: Path
    train_ids: tuple[str, ...]  # videos of the train split
    val_ids: tuple[str, ...]  # videos of the val split
    test_ids: tuple[str, ...]  # videos of the held-out test split

    @property
    def frames(self) -> Path:
        return self.root / "frames"

    def config(self, preset: str = "synthetic_tiny", *overrides: str) -> Config:
        """The preset on this corpus, sized for fast tests (2 workers x 2 videos per step), then `overrides`."""
        base = [f"data.root={self.root}", "optim.batch_size=2", "optim.num_epochs=1", "train.eval_every_steps=2",
                "train.log_every_steps=1", "train.num_workers=2", "train.keep_checkpoints=10"]
        return load_config(preset, [*base, *overrides])


def decode_videos(videos: Path, options: fs.StoreOptions) -> dict[str, list]:
    """The decode stage of preprocessing run in this process over every video under `videos`, as the pipeline lists
    them: its columns (manifest fields and "jpegs")."""
    from pipelines.inputs import list_videos
    from pipelines.preprocess import decode_batch

    inputs = list_videos(str(videos)).inputs
    return decode_batch({"video_id": [v.video_id for v in inputs], "source": [v.source for v in inputs]},
                        options=dataclasses.asdict(options))


def build_frame_store(videos: Path, out: Path, options: fs.StoreOptions) -> Path:
    """The frame store of every video under `videos`, decoded and written in-process (no Ray, clipbert's frame-store
    writer), one shard: what a clean run stores. Every video must decode."""
    decoded = decode_videos(videos, options)
    jpegs = decoded.pop("jpegs")
    rows = [dict(zip(decoded, values)) for values in zip(*decoded.values())]
    failed = [r["video_id"] for r in rows if r["status"] != "ok"]
    assert not failed, failed
    return fs.write_store(out, options, zip(rows, jpegs))


def load_bench(name: str):
    """bench/NAME.py as module "bench_NAME" (registered in sys.modules: its dataclasses look their module up by
    name); the bench/ directory it puts on sys.path is taken off again."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


def tiny_checkpoint(cfg: Config, directory: Path, seed: int) -> str:
    """A randomly initialised model of `cfg` saved as a checkpoint; its directory."""
    import torch

    from clipbert.model.checkpoint import build_model, save_checkpoint

    torch.manual_seed(seed)
    model, _ = build_model(cfg.model)
    return str(save_checkpoint(model, cfg, directory))


def tiny_index(cfg: Config, checkpoint: str, videos: list[str], out: Path, n_clips: int = 3) -> Path:
    """A video-granularity index of `videos` (of cfg.data.frame_store) at out/index, embedded without Ray
    (what pipelines/embed.py writes, one shard, in out/emb); returns out/index."""
    import numpy as np
    import pyarrow.parquet as pq

    from clipbert.model.checkpoint import checkpoint_hash
    from clipbert.config import config_to_dict
    from clipbert.retrieval.index import VideoIndex
    from pipelines.embed import Embedder, embedding_rows, load_clips

    batch = load_clips({"video_id": np.array(videos)}, cfg=config_to_dict(cfg), n_clips=n_clips)
    shards = out / "emb" / "shards"
    shards.mkdir(parents=True)
    pq.write_table(embedding_rows(Embedder(checkpoint, use_gpu=False)(batch)), shards / "r000-00000.parquet")
    provenance = {"checkpoint": checkpoint, "checkpoint_hash": checkpoint_hash(checkpoint),
                  "frame_store": cfg.data.frame_store, "n_clips": n_clips}
    VideoIndex.build(out / "emb", out / "index", granularity="video", memory_budget="1G", provenance=provenance)
    return out / "index"


def first_captions(corpus: TinyCorpus, videos: list[str]) -> list[str]:
    """The first training caption of each of `videos` (retrieval_train.jsonl of the tiny corpus)."""
    import json

    first: dict[str, str] = {}
    for line in (corpus.root / "txt" / "retrieval_train.jsonl").read_text().splitlines():
        row = json.loads(line)
        first.setdefault(row["clip_name"], row["caption"])
    return [first[v] for v in videos]


def corrupt_frames(store: Path, video_id: str) -> None:
    """Overwrite every stored frame of `video_id` in a frame store (one shard) with bytes that are not a JPEG."""
    import lmdb

    env = lmdb.open(str(fs.shard_dirs(store)[0]), subdir=True)
    with env.begin(write=True) as txn:
        for i in range(fs.FrameStore(store).n_stored(video_id)):
            txn.put(fs.frame_key(video_id, i), b"not a jpeg")
    env.close()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> TinyCorpus:
    """28 short 160x120 videos (20 train, 4 val, 4 test), their tokenizer (written by the synthesizer) and frame
    store."""
    from clipbert.synthetic.corpus import synthesize_corpus

    root = tmp_path_factory.mktemp("tiny_corpus")
    info = synthesize_corpus(root, n_videos=28, seed=7, val_videos=4, test_videos=4, min_duration=2.0,
                             max_duration=3.0, sizes=[(160, 120)], fps_choices=[10])
    build_frame_store(root / "videos", root / "frames", fs.StoreOptions(max_fps=4.0, max_side=160))
    return TinyCorpus(root, *(tuple(info.splits[s]) for s in ("train", "val", "test")))


@pytest.fixture(scope="session")
def tiny_stills(tmp_path_factory) -> Path:
    """40 captioned stills (32 train, 8 val; clipbert.synthetic.stills) with their tokenizer and frame store (1-frame
    videos) under root/frames; returns root."""
    from clipbert.synthetic.stills import synthesize_images

    root = tmp_path_factory.mktemp("tiny_stills")
    synthesize_images(root, n_images=40, val_images=8, seed=3)
    build_frame_store(root / "images", root / "frames", fs.StoreOptions(max_fps=4.0, max_side=160))
    return root


def pick_free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """`pick_free_port`, for Ray processes started by tests (so they never collide with another Ray)."""
    return pick_free_port


@pytest.fixture(scope="session")
def ray_env():
    """Environment for the Ray processes tests start: idle workers kept alive, as jobs/train.py asks."""
    from clipbert.training.run import IDLE_WORKERS_ENV, keep_idle_workers

    before = os.environ.get(IDLE_WORKERS_ENV)
    keep_idle_workers()
    yield dict(os.environ)
    if before is None:
        os.environ.pop(IDLE_WORKERS_ENV, None)


@pytest.fixture(scope="session")
def state_api():
    """`clipbert.ray_init.state_api_env`, for Ray processes started by tests."""
    return state_api_env


TWO_NODE_SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}  # a lost node is
# seen within about 2 s


class SharedRay:
    """The one Ray of the test session, this process connected: a local 2-CPU Ray, or a cluster of two 1-CPU nodes
    on this machine (ray.cluster_utils.Cluster). Each starts on first need, with its own dashboard that this
    process's State API (and that of every job a test launches) is pinned to, and stays up until a test needs the
    other kind; `pytest_collection_modifyitems` runs the two-node tests last, so each kind starts once."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.cluster = None
        self.saved_env: dict[str, str | None] = {}

    @property
    def address(self) -> str:
        """The GCS address that jobs launched by tests join with --address."""
        import ray

        return ray.get_runtime_context().gcs_address

    def local(self) -> "SharedRay":
        if self.kind != "local":
            self.stop()
            port = pick_free_port()
            self._pin_state_api(port)
            init_ray("local", 2, dashboard_port=port, progress_bars=False)
            self.kind = "local"
        return self

    def two_nodes(self):
        """The two-node cluster (its `Cluster` object)."""
        from ray.cluster_utils import Cluster

        if self.kind != "two_nodes":
            self.stop()
            port = pick_free_port()
            self._pin_state_api(port)
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
                "_system_config": TWO_NODE_SYSTEM_CONFIG})
            self.cluster.add_node(num_cpus=1)
            self.cluster.wait_for_nodes()
            init_ray(self.cluster.address, progress_bars=False)
            self.kind = "two_nodes"
        return self.cluster

    def _pin_state_api(self, port: int) -> None:
        for key, value in state_api_env(port).items():
            self.saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def stop(self) -> None:
        import ray

        if self.kind is not None:
            ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
        self.kind, self.cluster = None, None
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.saved_env = {}


@pytest.fixture(scope="session")
def shared_ray(ray_env):
    ray = SharedRay()
    yield ray
    ray.stop()


@pytest.fixture
def ray_local(shared_ray):
    """The session's local 2-CPU Ray (with its own dashboard), without Ray Data progress bars; `.address` is its
    GCS address for jobs launched with --address."""
    return shared_ray.local()


@pytest.fixture
def ray_two_nodes(shared_ray):
    """The session's Ray cluster of two 1-CPU nodes on this machine, this process connected (a node is declared
    lost after about 2 s); tests that remove a node add one back."""
    return shared_ray.two_nodes()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the two-node cluster run last (in their own order), so that the session starts each Ray once."""
    items.sort(key=lambda item: "ray_two_nodes" in getattr(item, "fixturenames", ()))
