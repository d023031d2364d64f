"""``archon-chat``: ``serve`` (the gateway, with the built-in agents unless
``AGENT_SERVICE_URL`` is set), ``agents`` (the agents service alone), ``settings``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial

import trio

from actors.chat.store import StoreError
from archon_chat.config import ConfigError, add_flags, describe, settings_from_args
from archon_chat.logs import setup_logging

SERVE_FLAGS = (
    "host",
    "port",
    "db_path",
    "agent_service_url",
    "kb_dir",
    "cors_origins",
    "log_level",
    "workers",
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
    setup_logging(settings)
    try:
        if args.command == "serve" and settings.workers > 1:
            from archon_chat.workers import run_workers

            return run_workers(settings)
        if args.command == "serve":
            from archon_chat.server import serve

            trio.run(partial(serve, settings))
        else:
            from archon_chat.agents import run_agents

            run_agents(settings)
    except KeyboardInterrupt:
        return 130
    except (StoreError, BaseExceptionGroup) as exc:
        # The database cannot be used (unreachable, foreign, newer): say why and exit.
        reasons = _store_errors(exc)
        if not reasons:
            raise
        for reason in reasons:
            print(f"archon-chat: {reason}", file=sys.stderr)
        return 1
    return 0


def _store_errors(exc: BaseException) -> list[StoreError]:
    """The store errors ``exc`` consists of; empty if it holds anything else."""
    if isinstance(exc, StoreError):
        return [exc]
    if not isinstance(exc, BaseExceptionGroup):
        return []
    found = [_store_errors(e) for e in exc.exceptions]
    return [e for errors in found for e in errors] if all(found) else []


if __name__ == "__main__":
    sys.exit(main())
