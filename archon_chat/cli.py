"""``archon-chat``: ``serve`` (the gateway, with the built-in agents unless
``AGENT_SERVICE_URL`` is set), ``agents`` (the agents service alone), ``settings``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from functools import partial

import trio

from archon_chat.config import ConfigError, Settings, add_flags, describe, settings_from_args

SERVE_FLAGS = (
    "host",
    "port",
    "db_path",
    "agent_service_url",
    "kb_dir",
    "cors_origins",
    "log_level",
)
AGENTS_FLAGS = ("agents_host", "agents_port", "kb_dir", "log_level")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archon-chat",
        description="Real-time chat gateway between a browser chat panel and AI agents.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (and the built-in agents)")
    add_flags(serve, SERVE_FLAGS)
    agents = sub.add_parser("agents", help="run the built-in agents service alone")
    add_flags(agents, AGENTS_FLAGS)
    sub.add_parser("settings", help="list every environment variable and its default")
    return parser


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per upstream request is noise at INFO; their warnings still show.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "settings":
        print(describe())
        return 0
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"archon-chat: {exc}", file=sys.stderr)
        return 2
    _logging(settings)
    from archon_chat.store import StoreError

    try:
        if args.command == "serve":
            from archon_chat.server import serve

            trio.run(partial(serve, settings))
        else:
            from archon_chat.agents import run_agents

            run_agents(settings)
    except KeyboardInterrupt:
        return 130
    except (StoreError, BaseExceptionGroup) as exc:
        store_error = _store_error(exc)
        if store_error is None:
            raise
        # The database cannot be used (damaged, foreign, unreadable): one line says why.
        print(f"archon-chat: {store_error}", file=sys.stderr)
        return 1
    return 0


def _store_error(exc: BaseException) -> BaseException | None:
    """The :class:`StoreError` ``exc`` is or only holds (through exception groups)."""
    from archon_chat.store import StoreError

    if isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        return _store_error(exc.exceptions[0])
    return exc if isinstance(exc, StoreError) else None


if __name__ == "__main__":
    sys.exit(main())
