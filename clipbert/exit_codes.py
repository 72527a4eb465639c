"""The exit codes every job shares, and the one mapping from an error to them.

0: done. 1: the work failed (every video failed, a storage error such as a full disk, the trainer's own error after
its retries). 2: bad arguments, configuration or input (the message names it), found before any work where it can be.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

OK, FAILED, BAD_INPUT = 0, 1, 2
BAD_INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError)


def exit_code(error: Exception) -> int:
    """BAD_INPUT for a bad argument, configuration or input file; FAILED for anything else (storage included)."""
    return BAD_INPUT if isinstance(error, BAD_INPUT_ERRORS) else FAILED


def job_main(logger: logging.Logger, work: str = "the job") -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorates a job's `main`: an error it raises is logged in one line (a bad input's message as it is, any other
    as "`work` failed: ...", a storage error with its path) and becomes the exit code `exit_code` gives it."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 (every error becomes one line and an exit code)
                if isinstance(e, BAD_INPUT_ERRORS) or isinstance(e, OSError):
                    logger.error("%s", e)
                else:
                    logger.error("%s failed: %s", work, e)
                return exit_code(e)

        return run

    return decorate
