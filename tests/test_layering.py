"""design.md's layering rules, checked on our own import statements (no imports executed).

1. ``archon_chat.protocol`` imports only the stdlib modules of :data:`PROTOCOL_STDLIB`
   (no I/O, clock, threads or event loop) and the pure codecs of :data:`CODECS`.
2. ``actors`` never imports quart, quart_trio, hypercorn, socketio, engineio or
   ``archon_chat``.
3. Only ``archon_chat.transports`` touches quart's request/websocket objects; the stated
   exception is the built-in agents service's HTTP module, :data:`AGENTS_HTTP` (a
   separate quart app of its own).
4. The gateway and the actors talk only through channels: ``archon_chat.gateway`` imports
   from ``actors`` only the messages, the hub and the store protocol
   (:data:`GATEWAY_MAY_USE`), never a session actor or the runtime.

And no import cycle between packages (each sub-package of ``archon_chat``/``actors`` and
each top-level module is one node; imports under ``TYPE_CHECKING`` count).

Each checker takes ``{path: source}``, so the tests at the end feed it small violating
sources to prove it reports them. Synchronous.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("actors", "archon_chat")
CODECS = {"socketio.packet", "engineio.packet", "engineio.payload"}
PROTOCOL_STDLIB = {
    "__future__",
    "abc",
    "base64",
    "binascii",
    "collections",
    "collections.abc",
    "dataclasses",
    "enum",
    "functools",
    "http",
    "itertools",
    "json",
    "math",
    "re",
    "string",
    "typing",
    "urllib.parse",
}
ACTORS_FORBIDDEN = {"quart", "quart_trio", "hypercorn", "socketio", "engineio", "archon_chat"}
AGENTS_HTTP = {"archon_chat/agents/service.py"}
QUART_REQUEST_NAMES = {
    "request",
    "websocket",
    "Request",
    "Websocket",
    "has_request_context",
    "has_websocket_context",
    "copy_current_request_context",
    "copy_current_websocket_context",
}
QUART_REQUEST_MODULES = {
    "quart.ctx",
    "quart.globals",
    "quart.wrappers",
    "quart.wrappers.request",
    "quart.wrappers.websocket",
}
GATEWAY_MAY_USE = {"actors.chat.messages", "actors.chat.hub", "actors.chat.store"}

Import = tuple[int, str, list[str]]


def module_name(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: str, source: str) -> list[Import]:
    """(line, module, imported names) of every import statement of ``path``."""
    tree = ast.parse(source, filename=path)
    out: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                package = Path(path).with_suffix("").parts[:-1]
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def top(module: str) -> str:
    return module.split(".")[0]


def _in(path: str, package: str) -> bool:
    return path.startswith(package.replace(".", "/") + "/")


def _targets(module: str, names: list[str]) -> Iterator[str]:
    """What an import statement reaches: ``module``, or ``module.name`` per name when the
    statement is ``from package import submodule``."""
    if not names:
        yield module
    for name in names:
        yield f"{module}.{name}"


# --- the rules --------------------------------------------------------------------------


def protocol_faults(sources: Mapping[str, str]) -> list[str]:
    bad = []
    for path, source in sources.items():
        if not _in(path, "archon_chat.protocol"):
            continue
        for line, module, names in imports_of(path, source):
            if module.startswith("archon_chat.protocol") or module in PROTOCOL_STDLIB:
                continue
            if module in CODECS or (names and set(_targets(module, names)) <= CODECS):
                continue
            bad.append(f"{path}:{line} imports {module}")
    return bad


def actors_faults(sources: Mapping[str, str]) -> list[str]:
    return [
        f"{path}:{line} imports {module}"
        for path, source in sources.items()
        if _in(path, "actors")
        for line, module, _ in imports_of(path, source)
        if top(module) in ACTORS_FORBIDDEN
    ]


def quart_request_faults(sources: Mapping[str, str]) -> list[str]:
    bad = []
    for path, source in sources.items():
        if _in(path, "archon_chat.transports") or path in AGENTS_HTTP:
            continue
        for line, module, names in imports_of(path, source):
            if top(module) not in ("quart", "quart_trio"):
                continue
            if module in QUART_REQUEST_MODULES or QUART_REQUEST_NAMES & set(names):
                bad.append(f"{path}:{line} imports {module}: {', '.join(names)}")
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("quart", "quart_trio")
                and node.attr in QUART_REQUEST_NAMES
            ):
                bad.append(f"{path}:{node.lineno} uses {node.value.id}.{node.attr}")
    return bad


def gateway_faults(sources: Mapping[str, str]) -> list[str]:
    bad = []
    for path, source in sources.items():
        if not _in(path, "archon_chat.gateway"):
            continue
        for line, module, names in imports_of(path, source):
            if top(module) != "actors":
                continue
            if module in GATEWAY_MAY_USE:
                continue
            reached = set(_targets(module, names))
            if names and reached <= GATEWAY_MAY_USE:
                continue
            bad.append(f"{path}:{line} imports {module}: {', '.join(names) or '*'}")
    return bad


def node_of(module: str, packages: set[str]) -> str | None:
    """The package graph node of ``module``: its sub-package of ``actors``/``archon_chat``
    (``archon_chat.sio``), a top-level module (``archon_chat.config``), or ``None`` if
    it is not ours."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if len(parts) == 1:
        return parts[0]
    second = ".".join(parts[:2])
    return second if second in packages or len(parts) == 2 else None


def package_graph(sources: Mapping[str, str]) -> dict[str, set[str]]:
    # Folders, with or without an __init__.py (a namespace package is a package too).
    packages = {".".join(Path(p).parts[:-1]) for p in sources if len(Path(p).parts) > 2}
    graph: dict[str, set[str]] = {}
    for path, source in sources.items():
        here = node_of(module_name(path), packages)
        if here is None:
            continue
        edges = graph.setdefault(here, set())
        for _, module, names in imports_of(path, source):
            for target in _targets(module, names):
                there = node_of(target, packages) or node_of(module, packages)
                if there is not None and there != here:
                    edges.add(there)
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One path per cycle found, each starting and ending at the same node."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            found.append([*stack[stack.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*stack, node])
        done.add(node)

    for start in sorted(graph):
        visit(start, [])
    return found


def our_sources() -> dict[str, str]:
    out = {}
    for package in PACKAGES:
        found = sorted((ROOT / package).rglob("*.py"))
        assert found, f"no Python files in {package}"
        for path in found:
            out[path.relative_to(ROOT).as_posix()] = path.read_text(encoding="utf-8")
    return out


# --- our code ---------------------------------------------------------------------------


def test_protocol_imports_only_allowed_stdlib_and_codecs() -> None:
    assert protocol_faults(our_sources()) == []


def test_actors_stay_framework_free() -> None:
    assert actors_faults(our_sources()) == []


def test_only_transports_touch_quart_request_objects() -> None:
    sources = our_sources()
    assert quart_request_faults(sources) == []
    # The exception is real: without it the agents service would be reported.
    assert quart_request_faults({p: sources[p] for p in AGENTS_HTTP}) == []
    moved = {f"archon_chat/x{i}.py": sources[p] for i, p in enumerate(sorted(AGENTS_HTTP))}
    assert quart_request_faults(moved)


def test_gateway_reaches_actors_only_through_messages_hub_and_store_protocol() -> None:
    assert gateway_faults(our_sources()) == []


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph(our_sources())
    assert {"archon_chat.sio", "archon_chat.gateway", "archon_chat.transports"} <= set(graph)
    assert "archon_chat.sio" in graph["archon_chat.gateway"]
    assert cycles(graph) == []


# --- the checkers see violations --------------------------------------------------------


def test_protocol_check_sees_io_and_frameworks() -> None:
    sources = {
        "archon_chat/protocol/bad.py": (
            "from __future__ import annotations\n"
            "import json, time\n"
            "import trio\n"
            "from socket import socket\n"
            "import threading, asyncio\n"
            "from urllib.request import urlopen\n"
            "from socketio import packet\n"
            "from engineio import server\n"
            "from . import codecs\n"
            "from ..sio import SocketIOServer\n"
        ),
        "archon_chat/sio/fine.py": "import trio\n",
    }
    assert protocol_faults(sources) == [
        "archon_chat/protocol/bad.py:2 imports time",
        "archon_chat/protocol/bad.py:3 imports trio",
        "archon_chat/protocol/bad.py:4 imports socket",
        "archon_chat/protocol/bad.py:5 imports threading",
        "archon_chat/protocol/bad.py:5 imports asyncio",
        "archon_chat/protocol/bad.py:6 imports urllib.request",
        "archon_chat/protocol/bad.py:8 imports engineio",
        "archon_chat/protocol/bad.py:10 imports archon_chat.sio",
    ]


def test_actors_check_sees_frameworks_and_the_gateway() -> None:
    sources = {
        "actors/chat/bad.py": (
            "import httpx\n"
            "from quart import Quart\n"
            "import hypercorn.trio\n"
            "from archon_chat.config import Settings\n"
            "if True:\n"
            "    import socketio\n"
        ),
        "archon_chat/fine.py": "from quart import Quart\n",
    }
    assert actors_faults(sources) == [
        "actors/chat/bad.py:2 imports quart",
        "actors/chat/bad.py:3 imports hypercorn.trio",
        "actors/chat/bad.py:4 imports archon_chat.config",
        "actors/chat/bad.py:6 imports socketio",
    ]


def test_quart_request_check_sees_requests_outside_transports() -> None:
    sources = {
        "archon_chat/gateway/bad.py": (
            "from quart import Blueprint, request\n"
            "from quart.wrappers.websocket import Websocket\n"
            "import quart\n"
            "def handler():\n"
            "    return quart.websocket\n"
        ),
        "archon_chat/agents/text.py": "from quart import request\n",
        "archon_chat/transports/rest.py": "from quart import request\n",
        "archon_chat/agents/service.py": "from quart import request\n",
        "archon_chat/agents/sse.py": "from quart.wrappers.response import ResponseBody\n",
    }
    assert quart_request_faults(sources) == [
        "archon_chat/gateway/bad.py:1 imports quart: Blueprint, request",
        "archon_chat/gateway/bad.py:2 imports quart.wrappers.websocket: Websocket",
        "archon_chat/gateway/bad.py:5 uses quart.websocket",
        "archon_chat/agents/text.py:1 imports quart: request",
    ]


def test_gateway_check_sees_calls_into_actors() -> None:
    sources = {
        "archon_chat/gateway/bad.py": (
            "from actors.chat.messages import ChatMessage\n"
            "from actors.chat.hub import SessionHub\n"
            "from actors.chat.store import Store\n"
            "from actors.chat import messages, session\n"
            "from actors.chat.session import SessionActor\n"
            "from actors.runtime import Mailbox\n"
            "import actors.runtime.supervisor\n"
            "from actors.chat import MemoryStore\n"
        ),
        "archon_chat/server.py": "from actors.chat.session import SessionActor\n",
    }
    assert gateway_faults(sources) == [
        "archon_chat/gateway/bad.py:4 imports actors.chat: messages, session",
        "archon_chat/gateway/bad.py:5 imports actors.chat.session: SessionActor",
        "archon_chat/gateway/bad.py:6 imports actors.runtime: Mailbox",
        "archon_chat/gateway/bad.py:7 imports actors.runtime.supervisor: *",
        "archon_chat/gateway/bad.py:8 imports actors.chat: MemoryStore",
    ]


def test_cycle_check_sees_the_transports_gateway_sio_cycle() -> None:
    sources = {
        "archon_chat/__init__.py": "",
        "archon_chat/config.py": "",
        "archon_chat/transports/__init__.py": "",
        "archon_chat/transports/rest.py": "from archon_chat.gateway.core import Gateway\n",
        "archon_chat/transports/shell.py": "from archon_chat import config\n",
        "archon_chat/gateway/__init__.py": "",
        "archon_chat/gateway/core.py": "from archon_chat.sio import SocketIOServer\n",
        "archon_chat/sio/__init__.py": "from .server import SocketIOServer\n",
        "archon_chat/sio/server.py": (
            "from archon_chat.transports.shell import App\nfrom ..config import derive\n"
        ),
    }
    graph = package_graph(sources)
    assert graph["archon_chat.sio"] == {"archon_chat.transports", "archon_chat.config"}
    assert graph["archon_chat.transports"] == {"archon_chat.gateway", "archon_chat.config"}
    assert cycles(graph) == [
        [
            "archon_chat.gateway",
            "archon_chat.sio",
            "archon_chat.transports",
            "archon_chat.gateway",
        ]
    ]
    del sources["archon_chat/sio/server.py"]
    assert cycles(package_graph(sources)) == []
