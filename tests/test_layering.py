"""design.md's layering rules, checked on our own import statements (no imports executed).

1. ``archon_chat.protocol`` imports only the stdlib and the pure codecs.
2. ``actors`` never imports quart, hypercorn, socketio, engineio or ``archon_chat``.
3. Only ``archon_chat.transports`` touches quart's request/websocket objects (the
   separate built-in agents service, ``archon_chat.agents``, is its own quart app).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODECS = {"socketio.packet", "engineio.packet", "engineio.payload"}


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import statement in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((node.lineno, alias.name, []))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                pkg = path.relative_to(ROOT).with_suffix("").parts[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def files(package: str) -> list[Path]:
    found = sorted((ROOT / package.replace(".", "/")).rglob("*.py"))
    assert found, f"no Python files in {package}"
    return found


def top(module: str) -> str:
    return module.split(".")[0]


def test_protocol_imports_only_stdlib_and_codecs() -> None:
    bad = []
    for path in files("archon_chat.protocol"):
        for line, module, names in imports_of(path):
            if module.startswith("archon_chat.protocol") or module == "__future__":
                continue
            if module in CODECS or top(module) in sys.stdlib_module_names:
                continue
            if names and {f"{module}.{name}" for name in names} <= CODECS:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "forbidden", ["quart", "quart_trio", "hypercorn", "socketio", "engineio", "archon_chat"]
)
def test_actors_stay_framework_free(forbidden: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in files("actors")
        for line, module, _ in imports_of(path)
        if top(module) == forbidden
    ]
    assert not bad, "\n".join(bad)


def test_only_transports_touch_quart_request_objects() -> None:
    allowed = ("archon_chat/transports/", "archon_chat/agents/")
    bad = []
    for path in files("archon_chat"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(allowed):
            continue
        for line, module, names in imports_of(path):
            if top(module) in ("quart", "quart_trio") and (
                {"request", "websocket", "Request", "Websocket"} & set(names)
                or module.endswith((".wrappers", ".ctx"))
            ):
                bad.append(f"{rel}:{line} imports {module}: {names}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_violations(tmp_path: Path) -> None:
    sample = ROOT / "tests" / "test_layering.py"
    found = {module for _, module, _ in imports_of(sample)}
    assert {"ast", "pytest", "__future__"} <= found
