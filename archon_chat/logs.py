"""Logging of every ``archon-chat`` process: the CLI's and each child of ``serve --workers``."""

from __future__ import annotations

import logging
import sys

from archon_chat.config import Settings


def setup_logging(settings: Settings, tag: str = "") -> None:
    """Log to stderr at the configured level; ``tag`` starts each line (which worker)."""
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s {tag}%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per upstream request is noise at INFO; their warnings still show.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
