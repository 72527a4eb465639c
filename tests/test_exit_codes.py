"""Tests of clipbert/exit_codes.py: which error becomes which exit code, and what job_main logs for it."""

from __future__ import annotations

import argparse
import errno
import json
import logging

import pytest

from clipbert.exit_codes import BAD_INPUT, FAILED, OK, exit_code, job_main

LOGGER = "test_exit_codes.job"


class InputError(ValueError):
    """A bad input of a job's own kind (as clipbert.training.preflight raises)."""


@pytest.mark.parametrize("error, code", [
    (ValueError("bad value"), BAD_INPUT),
    (InputError("a ValueError subclass"), BAD_INPUT),
    (json.JSONDecodeError("broken", "{", 0), BAD_INPUT),
    (FileNotFoundError("no such file"), BAD_INPUT),
    (FileExistsError("already there"), BAD_INPUT),
    (PermissionError("not readable"), BAD_INPUT),
    (OSError(errno.ENOSPC, "No space left on device"), FAILED),
    (RuntimeError("the trainer gave up"), FAILED),
    (KeyError("missing"), FAILED),
])
def test_exit_code_of_each_error(error, code):
    assert exit_code(error) == code


def test_the_codes_are_0_1_2():
    assert (OK, FAILED, BAD_INPUT) == (0, 1, 2)


def _job(error: BaseException | None, work: str = "the job"):
    """A job main decorated by job_main that raises `error` (returns its arguments' count when None)."""

    @job_main(logging.getLogger(LOGGER), work)
    def main(*args: str, **kwargs: str) -> int:
        """The job."""
        if error is not None:
            raise error
        return len(args) + len(kwargs)

    return main


def _logged(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_job_main_returns_what_main_returns_and_keeps_its_name():
    main = _job(None)
    assert main("a", "b", c="d") == 3
    assert (main.__name__, main.__doc__) == ("main", "The job.")


def test_a_bad_input_logs_its_message_as_it_is_and_returns_2(caplog):
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert _job(ValueError("--frames: no such directory: '/x'"))() == BAD_INPUT
    assert _logged(caplog) == [(logging.ERROR, "--frames: no such directory: '/x'")]


def test_a_storage_error_returns_1_with_its_message(caplog):
    error = OSError(errno.ENOSPC, "No space left on device", "/out/shard.parquet")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert _job(error)() == FAILED
    assert _logged(caplog) == [(logging.ERROR, str(error))]
    assert "/out/shard.parquet" in str(error) and "failed" not in str(error)


def test_another_error_returns_1_as_work_failed(caplog):
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert _job(RuntimeError("every video failed"), "preprocessing")() == FAILED
    assert _logged(caplog) == [(logging.ERROR, "preprocessing failed: every video failed")]


def test_the_default_work_is_the_job(caplog):
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert _job(KeyError("k"))() == FAILED
    assert _logged(caplog) == [(logging.ERROR, "the job failed: 'k'")]


@pytest.mark.parametrize("argv, code", [(["--bogus"], 2), (["--help"], 0)])
def test_system_exit_from_argparse_passes_through(argv, code, caplog, capsys):
    @job_main(logging.getLogger(LOGGER))
    def main(args: list[str]) -> int:
        argparse.ArgumentParser(prog="job").parse_args(args)
        return OK

    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == code and _logged(caplog) == []
    printed = capsys.readouterr()
    assert "usage: job" in printed.out + printed.err


def test_keyboard_interrupt_passes_through(caplog):
    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(KeyboardInterrupt):
        _job(KeyboardInterrupt())()
    assert _logged(caplog) == []
