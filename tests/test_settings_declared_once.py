"""Each setting and its default are declared once, in ``archon_chat.config.Settings``.

Three checks, each run on our sources and, to prove it can fail, on small violating ones:

1. Every options dataclass built with ``derive`` (the hub's, the agents client's, the
   Socket.IO server's, the Engine.IO session's) has only fields that are settings of the
   same name and type, and no defaults.
2. No numeric default in ``actors/`` or ``archon_chat/`` repeats the default of a setting
   with the same or a more specific name (``max_attachments=10``).
3. No function or class that receives a setting (``settings.x``, ``options.x``,
   ``self._settings.x``) as an argument declares a numeric default for that parameter,
   whatever its name (``open_agents_client(max_keepalive_connections=20)`` fed
   ``settings.agent_keepalive``).

Synchronous; reads source files, executes none of them.
"""

from __future__ import annotations

import ast
import dataclasses
import operator
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from actors.chat.settings import AgentsClientSettings, HubSettings
from archon_chat.config import Settings, derive, describe
from archon_chat.protocol.engineio import EngineConfig
from archon_chat.sio import ServerOptions

ROOT = Path(__file__).resolve().parent.parent
OPTIONS: tuple[type[Any], ...] = (HubSettings, AgentsClientSettings, ServerOptions, EngineConfig)
SETTINGS = {f.name: f for f in dataclasses.fields(Settings)}
#: name parts too common to relate a parameter to one setting on their own
GENERIC = {"s", "max", "min", "size", "timeout", "interval", "limit", "count"}
#: identifiers naming an options object in ``x.<setting>``
HOLDERS = ("settings", "options", "config")


# --- the checkers -----------------------------------------------------------------------


def option_faults(cls: type[Any]) -> list[str]:
    """Fields of the options dataclass ``cls`` that are not plain copies of a setting."""
    faults = []
    for f in dataclasses.fields(cls):
        where = f"{cls.__name__}.{f.name}"
        setting = SETTINGS.get(f.name)
        derived = getattr(Settings, f.name, None)
        if isinstance(derived, property) and derived.fget is not None:
            # a read-only property of Settings computed from settings (cluster_mode)
            kind = derived.fget.__annotations__.get("return")
            if str(f.type) != str(kind):
                faults.append(f"{where} is {f.type}, Settings.{f.name} is {kind}")
        elif setting is None:
            faults.append(f"{where} is not a setting")
        elif str(f.type) != str(setting.type):
            faults.append(f"{where} is {f.type}, the setting is {setting.type}")
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            faults.append(f"{where} declares a default")
    return faults


_OPERATORS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.LShift: lambda a, b: float(int(a) << int(b)),
}


def _number(node: ast.expr | None) -> float | None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return None if inner is None else -inner
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:  # 1 << 20, 60 * 60
        left, right = _number(node.left), _number(node.right)
        if left is not None and right is not None:
            return _OPERATORS[type(node.op)](left, right)
    return None


def _parameters(node: ast.AST) -> list[tuple[str, ast.expr | None]]:
    """(name, default) of each parameter of a function, or of a class's ``__init__``
    (its annotated class attributes, for a dataclass), ``self`` left out."""
    if isinstance(node, ast.ClassDef):
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                return _parameters(item)[1:]
        return [
            (item.target.id, item.value)
            for item in node.body
            if isinstance(item, ast.AnnAssign)
            and isinstance(item.target, ast.Name)
            and "ClassVar" not in ast.unparse(item.annotation)
        ]
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    args = node.args
    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    out = [(a.arg, d) for a, d in zip(positional, defaults, strict=True)]
    out += [(a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    return out


def _shown(node: ast.expr | None) -> str:
    return "" if node is None else ast.unparse(node)


def _tokens(name: str) -> set[str]:
    return set(name.strip("_").split("_"))


def _restates(param: str, value: float) -> str | None:
    """The setting whose default ``param = value`` repeats, if any."""
    own = _tokens(param) - GENERIC
    for name, f in SETTINGS.items():
        default = f.default
        if type(default) not in (int, float) or float(default) != value:
            continue
        if param == name or (own and own <= _tokens(name)):
            return name
    return None


def default_faults(sources: Mapping[str, str]) -> list[str]:
    """Numeric defaults in ``sources`` (path -> text) repeating a setting's default."""
    faults = []
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text, filename=path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                for param, default in _parameters(node):
                    value = _number(default)
                    if value is None:
                        continue
                    setting = _restates(param, value)
                    if setting is not None:
                        faults.append(
                            f"{path}:{node.lineno} {node.name}({param}={_shown(default)})"
                            f" repeats the default of Settings.{setting}"
                        )
    return faults


def _holds_a_setting(node: ast.expr) -> str | None:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr in SETTINGS:
            holder = sub.value
            name = holder.attr if isinstance(holder, ast.Attribute) else getattr(holder, "id", "")
            if any(word in name.lower() for word in HOLDERS):
                return sub.attr
    return None


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def pass_through_faults(sources: Mapping[str, str]) -> list[str]:
    """Parameters with a numeric default that a call in ``sources`` feeds a setting."""
    trees = {path: ast.parse(text, filename=path) for path, text in sources.items()}
    defs: dict[str, list[tuple[str, ast.AST]]] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defs.setdefault(node.name, []).append((path, node))
    faults = []
    for path, tree in trees.items():
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            name = _callee(call)
            if name is None or name not in defs:
                continue
            fed: list[tuple[int | str, str]] = []
            for i, arg in enumerate(call.args):
                setting = _holds_a_setting(arg)
                if setting is not None:
                    fed.append((i, setting))
            for kw in call.keywords:
                setting = _holds_a_setting(kw.value)
                if kw.arg is not None and setting is not None:
                    fed.append((kw.arg, setting))
            for def_path, node in defs[name]:
                params = _parameters(node)
                for key, setting in fed:
                    if isinstance(key, int):
                        if key >= len(params):
                            continue
                        param, default = params[key]
                    else:
                        found = [p for p in params if p[0] == key]
                        if not found:
                            continue
                        param, default = found[0]
                    if _number(default) is not None:
                        faults.append(
                            f"{def_path}:{node.lineno} {name}({param}={_shown(default)})"
                            f" has a default, and {path}:{call.lineno} passes Settings.{setting}"
                        )
    return faults


def our_sources() -> dict[str, str]:
    out = {}
    for package in ("actors", "archon_chat"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel != "archon_chat/config.py":
                out[rel] = path.read_text(encoding="utf-8")
    return out


def derived_classes(sources: Mapping[str, str]) -> Iterator[str]:
    """Names of the classes ``derive(cls, ...)`` builds in ``sources``."""
    for text in sources.values():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and _callee(node) == "derive" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Name):
                    yield first.id


# --- our code ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", OPTIONS, ids=lambda cls: cls.__name__)
def test_options_are_settings_without_defaults(cls: type[Any]) -> None:
    assert option_faults(cls) == []
    assert derive(cls, Settings()) == derive(cls, Settings())


def test_every_derived_class_is_checked() -> None:
    sources = our_sources()
    sources.update(
        (p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8"))
        for p in sorted((ROOT / "bench").rglob("*.py"))
    )
    built = set(derived_classes(sources))
    assert built, "derive is used nowhere: the check below would prove nothing"
    assert built <= {cls.__name__ for cls in OPTIONS}


def test_no_numeric_default_repeats_a_setting() -> None:
    assert default_faults(our_sources()) == []


def test_no_setting_is_passed_to_a_parameter_with_a_default() -> None:
    sources = our_sources()
    assert sorted(pass_through_faults(sources)) == []
    # The check reaches the places that pass settings on.
    reached = "\n".join(sources.values())
    assert "derive(AgentsClientSettings, settings)" in reached
    assert "intensity=settings.restart_intensity" in reached


def test_every_setting_is_listed() -> None:
    listing = describe()
    for f in SETTINGS.values():
        assert f.metadata["env"] in listing
    for env in (
        "ARCHON_CHAT_INBOX_SIZE",
        "ARCHON_CHAT_UPGRADE_TIMEOUT_S",
        "ARCHON_CHAT_SEQ_BLOCK",
        "ARCHON_CHAT_CHECKPOINT_INTERVAL_S",
        "ARCHON_CHAT_AGENT_KEEPALIVE_EXPIRY_S",
        "ARCHON_CHAT_AGENT_MAX_EVENT_CHARS",
        "ARCHON_CHAT_HTTP_KEEP_ALIVE_S",
        "ARCHON_CHAT_HEALTH_TIMEOUT_S",
    ):
        assert env in listing


# --- the checkers see violations --------------------------------------------------------


def test_option_check_sees_defaults_renames_and_strangers() -> None:
    @dataclasses.dataclass(frozen=True)
    class Drifted:
        mailbox_size: int = 64
        first_event_timeout_s: float = 60.0
        grace_s: int = 3

    assert option_faults(Drifted) == [
        "Drifted.mailbox_size declares a default",
        "Drifted.first_event_timeout_s is not a setting",
        "Drifted.first_event_timeout_s declares a default",
        "Drifted.grace_s is int, the setting is float",
        "Drifted.grace_s declares a default",
    ]


def test_default_check_sees_a_repeated_default() -> None:
    sources = {
        "actors/x.py": (
            "def decoder(max_attachments: int = 10, level: int = 2) -> None: ...\n"
            "class Options:\n"
            "    agent_max_event_chars: int = 1 << 20\n"
            "    inbox_size: int = 65\n"
            "def client(*, pools: int = 32, keepalive_expiry_s: float = 5.0) -> None: ...\n"
        )
    }
    assert default_faults(sources) == [
        "actors/x.py:1 decoder(max_attachments=10) repeats the default of Settings.max_attachments",
        "actors/x.py:2 Options(agent_max_event_chars=1 << 20) repeats the default of "
        "Settings.agent_max_event_chars",
        "actors/x.py:5 client(pools=32) repeats the default of Settings.agent_pools",
        "actors/x.py:5 client(keepalive_expiry_s=5.0) repeats the default of "
        "Settings.agent_keepalive_expiry_s",
    ]


def test_pass_through_check_sees_a_drifted_default() -> None:
    sources = {
        "actors/client.py": (
            "async def open_client(url, *, keepalive: int = 20, name: str = 'x') -> None: ...\n"
            "class Backend:\n"
            "    def __init__(self, url: str, timeout_s: float = 60.0) -> None: ...\n"
        ),
        "archon_chat/server.py": (
            "async def serve(settings):\n"
            "    await open_client('u', keepalive=settings.agent_keepalive, name=settings.host)\n"
            "    Backend(settings.llm_base_url, settings.llm_timeout_s * 2)\n"
            "    Backend('u', timeout_s=other.llm_timeout_s)\n"
        ),
    }
    assert sorted(pass_through_faults(sources)) == [
        "actors/client.py:1 open_client(keepalive=20) has a default, and "
        "archon_chat/server.py:2 passes Settings.agent_keepalive",
        "actors/client.py:2 Backend(timeout_s=60.0) has a default, and "
        "archon_chat/server.py:3 passes Settings.llm_timeout_s",
    ]


def test_derived_class_scan_sees_a_new_options_class() -> None:
    sources = {"archon_chat/x.py": "hub = derive(HubSettings, s)\nnew = derive(Stranger, s)\n"}
    assert list(derived_classes(sources)) == ["HubSettings", "Stranger"]
