"""Tests of clipbert/config_renames.py: old config keys refused with their new names in user input, and saved
configs with the old names translated so that they still load."""

from __future__ import annotations

import pytest

from clipbert.config import config_from_dict, config_to_dict, load_config
from clipbert.config_renames import RENAMED_KEYS, renamed_key_message, translate_renamed_keys

RENAMES = [("sampling.num_frames", "sampling.frames_per_clip"), ("sampling.fps", "sampling.clip_fps"),
           ("sampling.dense_num_frames", "sampling.dense_frames")]


@pytest.mark.parametrize("old, new", RENAMES)
def test_renamed_key_override_names_the_new_key(old, new):
    with pytest.raises(ValueError, match=rf"^{old} was renamed to {new}$"):
        load_config("tiny_ret", [f"{old}=2"])


@pytest.mark.parametrize("old, new", RENAMES)
def test_renamed_key_in_yaml_names_the_new_key(tmp_path, old, new):
    section, name = old.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(f"base: tiny_ret\n{section}: {{{name}: 2}}\n")
    with pytest.raises(ValueError, match=rf"^{old} was renamed to {new}$"):
        load_config(str(path))


def test_saved_config_with_renamed_keys_translates():
    c = load_config("tiny_ret", ["sampling.clip_fps=3", "sampling.frames_per_clip=4", "sampling.dense_frames=9"])
    saved = config_to_dict(c)
    sampling = saved["sampling"]
    for old, new in RENAMES:
        sampling[old.split(".")[1]] = sampling.pop(new.split(".")[1])
    with pytest.raises(ValueError, match="was renamed"):
        config_from_dict(saved)
    assert config_from_dict(translate_renamed_keys(saved)) == c
    assert "num_frames" in saved["sampling"]  # the input is left as it was


def test_the_renames_are_the_sampling_keys():
    assert RENAMED_KEYS == dict(RENAMES)


@pytest.mark.parametrize("old, new", RENAMES)
def test_an_old_key_message_names_the_new_key(old, new):
    assert renamed_key_message(old) == f"{old} was renamed to {new}"


@pytest.mark.parametrize("key", ["sampling.frames_per_clip", "num_frames", "data.fps", "sampling.fps.x", ""])
def test_any_other_key_has_no_message(key):
    assert renamed_key_message(key) is None


def test_translation_moves_old_keys_and_leaves_the_rest():
    saved = {"sampling": {"num_frames": 4, "fps": 2.0, "train_n_clips": 1}, "data": {"fps": 9}, "seed": 3}
    out = translate_renamed_keys(saved)
    assert out == {"sampling": {"frames_per_clip": 4, "clip_fps": 2.0, "train_n_clips": 1}, "data": {"fps": 9},
                   "seed": 3}
    assert saved == {"sampling": {"num_frames": 4, "fps": 2.0, "train_n_clips": 1}, "data": {"fps": 9}, "seed": 3}


def test_a_key_under_both_names_keeps_the_new_names_value():
    out = translate_renamed_keys({"sampling": {"dense_num_frames": 5, "dense_frames": 7}})
    assert out == {"sampling": {"dense_frames": 7}}


def test_a_config_without_old_keys_translates_to_an_equal_copy():
    saved = config_to_dict(load_config("tiny_ret"))
    out = translate_renamed_keys(saved)
    assert out == saved and out is not saved and out["sampling"] is not saved["sampling"]
    assert translate_renamed_keys({"sampling": None}) == {"sampling": None}
