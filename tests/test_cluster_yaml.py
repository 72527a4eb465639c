"""Tests for cluster.yaml: Ray's own cluster-config validation (offline), node types, install and start commands."""

import copy
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cfg() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_validate(cfg: dict) -> None:
    """What `ray up` checks before touching the cloud: defaults merged, then Ray's schema and sanity checks."""
    validate_config(prepare_config(copy.deepcopy(cfg)))


def worker_types(cfg: dict) -> dict:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def test_cluster_yaml_passes_rays_validation(cfg):
    ray_validate(cfg)
    assert cfg["provider"]["type"] == "aws"


def _rename_top(cfg):
    cfg["setup_comands"] = cfg.pop("setup_commands")


def _rename_in_node(cfg):
    node = cfg["available_node_types"]["gpu_worker"]
    node["min_worker"] = node.pop("min_workers")


def _min_over_global_max(cfg):
    cfg["available_node_types"]["gpu_worker"]["min_workers"] = cfg["max_workers"] + 1


BROKEN = [
    (_rename_top, jsonschema.ValidationError, "'setup_comands' was unexpected"),
    (_rename_in_node, jsonschema.ValidationError, "'min_worker' was unexpected"),
    (lambda c: c.update(max_workers="ten"), jsonschema.ValidationError, "'ten' is not of type 'integer'"),
    (lambda c: c["available_node_types"]["cpu_worker"].pop("node_config"), jsonschema.ValidationError,
     "'node_config' is a required property"),
    (_min_over_global_max, ValueError, "smaller than the sum of `min_workers`"),
    (lambda c: c.update(head_node_type="headd"), ValueError, "`head_node_type` must be one of"),
]


@pytest.mark.parametrize("break_it,error,message", BROKEN)
def test_broken_copies_fail_rays_validation(cfg, break_it, error, message):
    broken = copy.deepcopy(cfg)
    break_it(broken)
    with pytest.raises(error, match=re.escape(message)):
        ray_validate(broken)


def node_bound_errors(cfg: dict) -> list[str]:
    """Per-type min_workers above that type's max_workers: Ray's validation does not catch this one."""
    return [name for name, node in worker_types(cfg).items()
            if node.get("min_workers", 0) > node.get("max_workers", cfg["max_workers"])]


def test_per_type_worker_bounds(cfg):
    assert node_bound_errors(cfg) == []
    broken = copy.deepcopy(cfg)
    broken["available_node_types"]["cpu_worker"].update(min_workers=3, max_workers=2)
    assert node_bound_errors(broken) == ["cpu_worker"]


def test_node_types_cover_training_and_preprocessing(cfg):
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head.get("max_workers", 0) == 0
    workers = worker_types(cfg)
    gpu = [k for k, v in workers.items() if v["resources"].get("GPU", 0) > 0]
    cpu = [k for k, v in workers.items() if v["resources"].get("GPU", 0) == 0 and v["resources"].get("CPU", 0) > 0]
    assert gpu and cpu
    assert sum(workers[k]["max_workers"] for k in workers) <= cfg["max_workers"]


def test_setup_installs_the_project_and_ray_starts_with_token_auth(cfg):
    setup = "\n".join(cfg["setup_commands"])
    assert "torch==2.13.0" in setup and "download.pytorch.org/whl/cpu" in setup
    assert 'install -e "$HOME/clipbert[gpu]"' in setup and 'install -e "$HOME/clipbert[cpu]"' in setup
    assert "mount -t nfs4" in setup and "/mnt/shared" in setup
    assert cfg["file_mounts"]["~/clipbert"] == "."
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert len(start) == 1 and "RAY_AUTH_MODE=token" in start[0], key
    assert "--head" in cfg["head_start_ray_commands"][-1]
    assert "$RAY_HEAD_IP:6379" in cfg["worker_start_ray_commands"][-1]


COMMAND_KEYS = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("key", COMMAND_KEYS)
def test_commands_are_valid_shell(cfg, key):
    for command in cfg[key]:
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert result.returncode == 0, f"{key}: {command!r}: {result.stderr}"
