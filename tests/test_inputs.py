"""Tests of listing a preprocessing run's inputs (pipelines/inputs.py): ids, what is ignored, links, bad names."""

from __future__ import annotations

import os

import pytest

from pipelines.inputs import input_problem, list_videos, printable


def _touch(root, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")  # listing never reads a file


def test_a_directory_lists_videos_by_relative_id_and_reports_the_rest(tmp_path):
    _touch(tmp_path, "a.mp4", "cam/b.MOV", "cam/deep/c.webm", "still.png", "notes.txt", "labels.json")
    listing = list_videos(str(tmp_path))
    assert [(v.video_id, v.error) for v in listing.inputs] == [("a", ""), ("cam/b", ""), ("cam/deep/c", ""),
                                                                ("still", "")]
    assert listing.inputs[1].source == str(tmp_path / "cam" / "b.MOV")
    assert listing.ignored == sorted([str(tmp_path / "labels.json"), str(tmp_path / "notes.txt")])


def test_duplicate_ids_are_an_error_before_any_work(tmp_path):
    for ext in ("mp4", "webm"):
        (tmp_path / f"clip.{ext}").write_bytes(b"x")
    with pytest.raises(ValueError, match="duplicate video_id 'clip'.*clip.mp4 and .*clip.webm"):
        list_videos(str(tmp_path))


def test_a_glob_takes_ids_relative_to_its_fixed_prefix(tmp_path):
    _touch(tmp_path, "a.mp4", "nested/b.mp4", "nested/c.webm")
    listing = list_videos(str(tmp_path) + "/**/*.mp4")
    ids = [v.video_id for v in listing.inputs]
    assert "nested/b" in ids and "nested/c" not in ids  # ids under the prefix; only what the pattern matches
    assert all(v.source.endswith(".mp4") for v in listing.inputs)


def test_a_list_file_takes_every_line_as_given_with_ids_under_their_common_parent(tmp_path):
    _touch(tmp_path, "v/x/one.mp4")
    listed = tmp_path / "list.txt"
    listed.write_text(f"# inputs\n{tmp_path}/v/x/one.mp4\n\n{tmp_path}/v/y/gone.mp4\n")
    listing = list_videos(str(listed))
    assert [v.video_id for v in listing.inputs] == ["x/one", "y/gone"]  # a missing one is listed: it fails later
    assert listing.ignored == []


def test_a_missing_directory_or_list_file_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no such directory, glob match or list file: {tmp_path}/none"):
        list_videos(str(tmp_path / "none"))


def test_a_link_back_up_the_tree_lists_each_file_once(tmp_path):
    _touch(tmp_path, "a.mp4", "sub/b.mp4")
    os.symlink("..", tmp_path / "sub" / "up")
    os.symlink("a.mp4", tmp_path / "a_link.mp4")
    listing = list_videos(str(tmp_path))
    assert [v.video_id for v in listing.inputs] == ["a", "sub/b"]
    assert sorted(listing.aliases) == sorted([str(tmp_path / "a_link.mp4"), str(tmp_path / "sub" / "up")])


def test_a_name_that_is_not_utf8_is_listed_printable_with_its_reason(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.mp4"
    open(raw, "wb").close()
    (item,) = list_videos(str(tmp_path)).inputs
    assert item.video_id == "caf\\xe9" and item.source == f"{tmp_path}/caf\\xe9.mp4"
    assert item.error.startswith("file name is not valid UTF-8")


@pytest.mark.parametrize("video_id, reason", [
    ("ok/name", ""),
    ("../up", "video id is not a path inside the input root"),
    ("a//b", "video id is not a path inside the input root"),
    ("x" * 600, "video id longer than 500 bytes"),
])
def test_input_problem_names_what_an_id_cannot_be(video_id, reason):
    assert input_problem(video_id, f"/videos/{video_id}.mp4").startswith(reason)


def test_printable_escapes_only_bytes_that_are_not_utf8():
    assert printable("plain/ü.mp4") == "plain/ü.mp4"
    assert printable(os.fsdecode(b"caf\xe9.mp4")) == "caf\\xe9.mp4"
