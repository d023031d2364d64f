"""The knowledge base: a folder of documents indexed into SQLite FTS5, ranked by BM25.

Documents are ``.md``, ``.markdown``, ``.txt`` and ``.rst`` files under the folder
(hidden files and folders skipped). An optional front matter block sets ``title`` and
``source`` (what ``source_filter`` matches besides the path and title)::

    ---
    title: Configuration
    source: docs.example.com/configuration
    ---

Each document is split into passages along its headings (a passage never spans two
sections, and long sections are cut at block boundaries). The index lives in its own
SQLite file; :meth:`KnowledgeBase.refresh` re-indexes files whose mtime or size changed
and whose content hash differs, and drops files that disappeared.

All SQLite work runs in worker threads, one at a time (the connection is shared, behind a
``trio.CapacityLimiter(1)``); a refresh indexes one file per thread call, so cancelling a
request stops it between files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from archon_chat.agents import text as tx

log = logging.getLogger("archon_chat.agents")

SHIPPED_KB = Path(__file__).resolve().parent / "kb"
EXTENSIONS = (".md", ".markdown", ".txt", ".rst")
#: Larger files are skipped: a knowledge base is prose, not data dumps.
MAX_FILE_BYTES = 4 * 1024 * 1024
#: A passage grows block by block up to about this many characters.
PASSAGE_CHARS = 900
MAX_QUERY_TERMS = 32
SCHEMA_VERSION = 2
#: BM25 column weights: document title, section heading, passage body.
WEIGHTS = (2.0, 4.0, 1.0)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Passage:
    path: str  # relative to the knowledge-base folder, with forward slashes
    title: str
    source: str
    heading: str  # "Title › Section › Subsection"
    body: str
    position: int
    score: float  # BM25, lower is better

    @property
    def label(self) -> str:
        return self.heading or self.title


@dataclass(frozen=True, slots=True)
class Document:
    path: str
    title: str
    source: str
    text: str


@dataclass(frozen=True, slots=True)
class _Stat:
    path: str
    mtime_ns: int
    size: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, title TEXT NOT NULL, source TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS passages (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, position INTEGER NOT NULL,
    heading TEXT NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS passages_by_path ON passages (path);
CREATE VIRTUAL TABLE IF NOT EXISTS passage_fts USING fts5 (
    title, heading, body,
    tokenize = "porter unicode61 remove_diacritics 2 tokenchars '_'"
);
"""


class KnowledgeBase:
    """The index of one knowledge-base folder in one SQLite file.

    ``root`` empty or ``None`` means the documentation shipped with the package. The index
    file (and its folder) is created on first use; an index built for another folder, or
    by another schema version, is rebuilt.
    """

    def __init__(self, root: str | Path | None, index_path: str | Path) -> None:
        self.root = Path(root).expanduser().resolve() if root else SHIPPED_KB
        self.index_path = str(index_path)
        self._limiter = trio.CapacityLimiter(1)
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    # -- async API (each call is a checkpoint; cancellation waits for the thread's step)

    async def refresh(self) -> None:
        """Bring the index up to date with the folder.

        Raises ``OSError`` if the folder cannot be read, ``sqlite3.Error`` if the index
        cannot be written. Cancellable between files.
        """
        found = await self._run(self._scan)
        changed, removed = await self._run(self._plan, found)
        if removed:
            await self._run(self._remove, removed)
        for stat in changed:
            await self._run(self._index_file, stat)

    async def search(
        self, query: str, limit: int, source_filter: str | None = None
    ) -> list[Passage]:
        """The ``limit`` passages best matching ``query``, best first (BM25).

        ``source_filter`` keeps passages whose path, source or title contains it (case
        insensitive). Words of the query are OR-ed: passages matching more of them, and
        matching them in titles and headings, rank higher.
        """
        return await self._run(self._search, query, limit, source_filter)

    async def document(self, name: str) -> Document | None:
        """The document whose path (with or without extension) or title is ``name``, or the
        only one whose path or title contains it (case insensitive)."""
        return await self._run(self._document, name)

    async def catalogue(self) -> list[tuple[str, str]]:
        """``(path, title)`` of every indexed document, by path."""
        return await self._run(self._catalogue)

    async def aclose(self) -> None:
        await self._run(self._close)

    # -- plumbing

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("knowledge base is closed")
        if self._conn is not None:
            return self._conn
        if self.index_path != ":memory:":
            Path(self.index_path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Used from worker threads, one at a time (self._limiter).
        conn = sqlite3.connect(
            os.path.expanduser(self.index_path), check_same_thread=False, timeout=5.0
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                conn.executescript(
                    "DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS files;"
                    "DROP TABLE IF EXISTS passages; DROP TABLE IF EXISTS passage_fts;"
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            row = conn.execute("SELECT value FROM meta WHERE key = 'root'").fetchone()
            if row is None or row[0] != str(self.root):
                with conn:
                    conn.execute("DELETE FROM files")
                    conn.execute("DELETE FROM passages")
                    conn.execute("DELETE FROM passage_fts")
                    conn.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('root', ?)",
                        (str(self.root),),
                    )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _scan(self) -> list[_Stat]:
        if not self.root.is_dir():
            raise OSError(f"knowledge-base folder {self.root} does not exist")
        found = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or not name.lower().endswith(EXTENSIONS):
                    continue
                full = Path(folder, name)
                try:
                    st = full.stat()
                except OSError:
                    continue  # vanished while scanning
                if st.st_size > MAX_FILE_BYTES:
                    log.warning(
                        "knowledge base: %s is over %d bytes, skipped", full, MAX_FILE_BYTES
                    )
                    continue
                rel = full.relative_to(self.root).as_posix()
                found.append(_Stat(rel, st.st_mtime_ns, st.st_size))
        return found

    def _plan(self, found: list[_Stat]) -> tuple[list[_Stat], list[str]]:
        conn = self._connect()
        known = {
            path: (mtime, size)
            for path, mtime, size in conn.execute("SELECT path, mtime_ns, size FROM files")
        }
        changed = [s for s in found if known.get(s.path) != (s.mtime_ns, s.size)]
        present = {s.path for s in found}
        removed = sorted(p for p in known if p not in present)
        return changed, removed

    def _remove(self, paths: list[str]) -> None:
        conn = self._connect()
        with conn:
            for path in paths:
                self._delete(conn, path)
                conn.execute("DELETE FROM files WHERE path = ?", (path,))

    @staticmethod
    def _delete(conn: sqlite3.Connection, path: str) -> None:
        conn.execute(
            "DELETE FROM passage_fts WHERE rowid IN (SELECT id FROM passages WHERE path = ?)",
            (path,),
        )
        conn.execute("DELETE FROM passages WHERE path = ?", (path,))

    def _index_file(self, stat: _Stat) -> None:
        conn = self._connect()
        try:
            raw = (self.root / stat.path).read_bytes()
        except OSError:
            return  # vanished: the next refresh removes it
        digest = hashlib.sha256(raw).hexdigest()
        row = conn.execute("SELECT sha256 FROM files WHERE path = ?", (stat.path,)).fetchone()
        if row is not None and row[0] == digest:
            with conn:  # touched, not changed: remember the new mtime, skip the split
                conn.execute(
                    "UPDATE files SET mtime_ns = ?, size = ? WHERE path = ?",
                    (stat.mtime_ns, stat.size, stat.path),
                )
            return
        doc = parse_document(stat.path, raw.decode("utf-8", errors="replace"))
        with conn:
            self._delete(conn, stat.path)
            conn.execute(
                "INSERT OR REPLACE INTO files (path, mtime_ns, size, sha256, title, source, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (stat.path, stat.mtime_ns, stat.size, digest, doc.title, doc.source, doc.text),
            )
            for position, (heading, body) in enumerate(split_passages(doc)):
                cursor = conn.execute(
                    "INSERT INTO passages (path, position, heading, body) VALUES (?, ?, ?, ?)",
                    (stat.path, position, heading, body),
                )
                conn.execute(
                    "INSERT INTO passage_fts (rowid, title, heading, body) VALUES (?, ?, ?, ?)",
                    (cursor.lastrowid, doc.title, heading, body),
                )

    def _search(self, query: str, limit: int, source_filter: str | None) -> list[Passage]:
        match = match_expression(query)
        if not match:
            return []
        conn = self._connect()
        sql = (
            "SELECT p.path, f.title, f.source, p.heading, p.body, p.position,"
            " bm25(passage_fts, ?, ?, ?) AS score"
            " FROM passage_fts JOIN passages p ON p.id = passage_fts.rowid"
            " JOIN files f ON f.path = p.path"
            " WHERE passage_fts MATCH ?"
        )
        params: list[object] = [*WEIGHTS, match]
        if source_filter:
            needle = source_filter.lower()
            sql += (
                " AND (instr(lower(f.path), ?) > 0 OR instr(lower(f.source), ?) > 0"
                " OR instr(lower(f.title), ?) > 0)"
            )
            params += [needle, needle, needle]
        sql += " ORDER BY score, p.path, p.position LIMIT ?"
        params.append(limit)
        return [
            Passage(path, title, source, heading, body, position, score)
            for path, title, source, heading, body, position, score in conn.execute(sql, params)
        ]

    def _document(self, name: str) -> Document | None:
        conn = self._connect()
        rows = conn.execute("SELECT path, title, source, body FROM files ORDER BY path").fetchall()
        wanted = name.strip().lower()
        if not wanted:
            return None

        def exact(path: str, title: str) -> bool:
            stem = path.rsplit(".", 1)[0].lower()
            return wanted in (path.lower(), stem, stem.rsplit("/", 1)[-1], title.lower())

        hits = [r for r in rows if exact(r[0], r[1])]
        if not hits:
            hits = [r for r in rows if wanted in r[0].lower() or wanted in r[1].lower()]
        if len(hits) != 1:
            return None
        path, title, source, body = hits[0]
        return Document(path, title, source, body)

    def _catalogue(self) -> list[tuple[str, str]]:
        conn = self._connect()
        return [(p, t) for p, t in conn.execute("SELECT path, title FROM files ORDER BY path")]


def match_expression(query: str) -> str:
    """An FTS5 query OR-ing the content words of ``query`` (all words if it has none)."""
    words = tx.unique(tx.terms(query)) or tx.unique(w.lower() for w in tx.words(query))
    # Words are letters, digits, apostrophes and underscores (text.WORD): never a quote.
    return " OR ".join(f'"{w}"' for w in words[:MAX_QUERY_TERMS])


def parse_document(path: str, raw: str) -> Document:
    """Title, source and body of a file: front matter first, else the first ``#`` heading,
    else the file name."""
    meta: dict[str, str] = {}
    body = raw.replace("\r\n", "\n")
    if body.startswith("---\n"):
        end = body.find("\n---", 4)
        if end != -1:
            for line in body[4:end].splitlines():
                key, sep, value = line.partition(":")
                if sep:
                    meta[key.strip().lower()] = value.strip().strip("\"'")
            body = body[end + 4 :].lstrip("-").lstrip("\n")
    title = meta.get("title", "")
    if not title:
        for kind, block in tx.blocks(body):
            level, heading = tx.heading_level(block) if kind == "heading" else (0, "")
            if level == 1:
                title = tx.strip_inline(heading)
                break
    if not title:
        stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        title = stem.replace("-", " ").replace("_", " ").strip().capitalize() or path
    return Document(path, title, meta.get("source", path), body)


def split_passages(doc: Document) -> list[tuple[str, str]]:
    """``(heading path, body)`` passages of a document, in order."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    current: list[str] = []
    size = 0

    def heading_path() -> str:
        parts = [doc.title] + [h for level, h in stack if level > 1]
        return " › ".join(parts)

    def flush() -> None:
        nonlocal size
        if current:
            out.append((heading_path(), "\n\n".join(current)))
            current.clear()
            size = 0

    for kind, block in tx.blocks(doc.text):
        if kind == "heading":
            flush()
            level, heading = tx.heading_level(block)
            stack[:] = [(lv, h) for lv, h in stack if lv < level]
            stack.append((level, tx.strip_inline(heading)))
            continue
        rendered = {
            "paragraph": block,
            "list": f"- {block}",
            "code": f"```\n{block}\n```",
        }[kind]
        if current and size + len(rendered) > PASSAGE_CHARS:
            flush()
        current.append(rendered)
        size += len(rendered)
    flush()
    return _join_lists(out)


def _join_lists(passages: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    # Consecutive list items read better one per line than as separate paragraphs.
    return [(h, body.replace("\n\n- ", "\n- ")) for h, body in passages]
