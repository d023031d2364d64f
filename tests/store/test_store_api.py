"""The gateway depends on the store protocol, not on a store: only the protocol module
(``archon_chat.store_api``) names the concrete stores (mypy checks there that both
satisfy the protocol)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONCRETE = {"archon_chat.store", "archon_chat.store_postgres", "actors.chat.memory_store"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_gateway_imports_no_concrete_store() -> None:
    users = [*sorted((ROOT / "archon_chat" / "gateway").rglob("*.py"))]
    users += [ROOT / "archon_chat" / "server.py", ROOT / "actors" / "chat" / "hub.py"]
    users += [ROOT / "actors" / "chat" / "session.py"]
    bad = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in users
        for module in imported_modules(path) & CONCRETE
    }
    assert not bad, sorted(bad)


def test_the_checker_sees_a_concrete_import(tmp_path: Path) -> None:
    source = tmp_path / "bad.py"
    source.write_text(
        "from archon_chat.store import SqliteStore\nimport archon_chat.store_postgres\n"
    )
    assert imported_modules(source) & CONCRETE == CONCRETE - {"actors.chat.memory_store"}
