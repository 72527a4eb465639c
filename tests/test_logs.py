"""Tests of clipbert/logs.py: the jobs' logging goes to stderr, from the level asked, with a time stamp and the
module name."""

from __future__ import annotations

import logging
import re

import pytest

from clipbert.logs import setup_logging

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<name>[\w.]+): (?P<message>.*)$")


@pytest.fixture
def root_logger():
    """The root logger, its level and handlers put back after the test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _lines(text: str) -> list[tuple[str, str, str]]:
    """(level, logger name, message) of each logged line; every line must have the format."""
    matches = [LINE.match(line) for line in text.splitlines()]
    assert all(matches), text
    return [(m["level"], m["name"], m["message"]) for m in matches]


def test_info_and_above_go_to_stderr_with_the_module_name(root_logger, capsys):
    setup_logging()
    log = logging.getLogger("clipbert.some.module")
    log.debug("not shown")
    log.info("stored %d videos", 3)
    log.error("a shard failed")
    out = capsys.readouterr()
    assert out.out == ""
    assert _lines(out.err) == [("INFO", "clipbert.some.module", "stored 3 videos"),
                               ("ERROR", "clipbert.some.module", "a shard failed")]
    assert root_logger.level == logging.INFO


def test_the_level_asked_is_the_threshold(root_logger, capsys):
    setup_logging(logging.DEBUG)
    logging.getLogger("jobs.train").debug("step %d", 1)
    assert _lines(capsys.readouterr().err) == [("DEBUG", "jobs.train", "step 1")]
    setup_logging(logging.WARNING)
    logging.getLogger("jobs.train").info("hidden")
    logging.getLogger("jobs.train").warning("shown")
    assert _lines(capsys.readouterr().err) == [("WARNING", "jobs.train", "shown")]


def test_a_second_setup_replaces_the_handlers(root_logger, capsys):
    setup_logging()
    setup_logging()
    assert len(root_logger.handlers) == 1
    logging.getLogger("x").info("once")
    assert _lines(capsys.readouterr().err) == [("INFO", "x", "once")]
