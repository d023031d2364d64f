"""The browser panel: ``/`` (the demo page), ``/static/*`` (our files) and ``/vendor/*``
(the pinned npm packages' ES modules, served from ``node_modules``; no CDN)."""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response, abort, send_file

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

#: URL name -> path under node_modules
VENDOR_FILES = {
    "socket.io.esm.min.js": "socket.io-client/dist/socket.io.esm.min.js",
    "marked.esm.js": "marked/lib/marked.esm.js",
    "purify.es.mjs": "dompurify/dist/purify.es.mjs",
}


def find_node_modules() -> Path | None:
    """``node_modules`` of the checkout (``make setup`` installs it), if present."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "node_modules"
        if candidate.is_dir():
            return candidate
    cwd = Path.cwd() / "node_modules"
    return cwd if cwd.is_dir() else None


def create_static_blueprint(web_dir: Path = WEB_DIR) -> Blueprint:
    bp = Blueprint("panel", __name__)
    node_modules = find_node_modules()

    @bp.get("/")
    async def index() -> Response:
        return await _file(web_dir / "index.html")

    @bp.get("/static/<path:name>")
    async def static(name: str) -> Response:
        return await _file(_inside(web_dir, name))

    @bp.get("/vendor/<name>")
    async def vendor(name: str) -> Response:
        rel = VENDOR_FILES.get(name)
        if rel is None or node_modules is None:
            abort(404)
        return await _file(node_modules / rel)

    return bp


def _is_file(path: Path) -> bool:
    return path.is_file()


MAX_NAME_CHARS = 255


def _inside(root: Path, name: str) -> Path | None:
    """``root / name`` if that is a file under ``root``; ``None`` for any name the file
    system refuses (a NUL byte, a name too long, a lone surrogate)."""
    if len(name) > MAX_NAME_CHARS or "\x00" in name:
        return None
    try:
        path = (root / name).resolve()
        return path if path.is_relative_to(root.resolve()) and path.is_file() else None
    except (OSError, ValueError):
        return None


async def _file(path: Path | None) -> Response:
    if path is None or not _is_file(path):
        abort(404)
    mimetype = None
    if path.suffix in (".js", ".mjs"):
        mimetype = "text/javascript"
    response = await send_file(path, mimetype=mimetype)
    response.headers["Cache-Control"] = "no-cache"
    return response
