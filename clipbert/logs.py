"""One logging setup for every job (called only from jobs/)."""

import logging
import sys


def setup_logging(level: int = logging.INFO) -> None:
    """Send INFO and above to stderr with a time stamp and the module name."""
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
