"""REST under ``/api/agent-chat``, plus ``/healthz`` and ``/metrics``, on quart-trio.

Every error is JSON ``{"detail", "code"}`` (design.md section 3); bad input is never a 500.
With an API key configured, ``/api/agent-chat`` needs ``Authorization: Bearer <key>``; in
user mode (:mod:`archon_chat.auth`) it needs ``Authorization: Bearer <jwt>`` instead, and
each call acts for the token's user (``g.user``).
Requests from a foreign ``Origin`` not in the allowlist, or (without an API key) for a
``Host`` that is not ours, are refused (403, :mod:`archon_chat.transports.origin`); allowed
ones get CORS headers, preflights included.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Blueprint, Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from archon_chat.gateway.core import Gateway
from archon_chat.gateway.errors import GatewayError
from archon_chat.gateway.validation import parse_json
from archon_chat.limits import RateLimiter, client_address, retry_after_header
from archon_chat.origins import OriginRequest, Verdict

log = logging.getLogger(__name__)

PREFIX = "/api/agent-chat"


def json_response(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False), status=status, content_type="application/json"
    )


def error_response(status: int, detail: str, code: str) -> Response:
    return json_response({"detail": detail, "code": code}, status)


def _origin_request() -> OriginRequest:
    return OriginRequest(
        origin=request.headers.get("Origin"),
        scheme=request.scheme,
        host=request.headers.get("Host"),
        forwarded_proto=request.headers.get("X-Forwarded-Proto"),
    )


def create_rest_blueprint(
    gateway: Gateway, health: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
) -> Blueprint:
    bp = Blueprint("agent_chat", __name__)
    settings = gateway.settings

    def refused(status: int, detail: str, code: str) -> Response:
        gateway.metrics.refusals.labels(code=code).inc()
        return error_response(status, detail, code)

    async def read_json() -> Any:
        raw = await request.get_data(as_text=False)
        if not raw:
            return None
        return parse_json(raw, gateway.json_limits)

    policy = settings.origin_policy()

    def bearer() -> str:
        header = request.headers.get("Authorization", "")
        return header[7:] if header.startswith("Bearer ") else ""

    def has_api_key() -> bool:
        return bool(settings.api_key) and hmac.compare_digest(
            bearer().encode(), settings.api_key.encode()
        )

    def user() -> str | None:
        """The caller in user mode (the guard verified its token); ``None`` otherwise."""
        name: str | None = g.get("user")
        return name

    @bp.before_app_request
    async def guard() -> Response | None:
        verdict = policy.check(_origin_request())
        if verdict.refusal == "host":
            return refused(403, "Host not allowed", "forbidden_host")
        if not verdict.allowed and request.path.startswith(PREFIX):
            return refused(403, "Origin not allowed", "forbidden_origin")
        if request.method == "OPTIONS" and verdict.allow_origin is not None:
            return _with_cors(Response("", status=204), verdict, preflight=True)
        if not request.path.startswith(PREFIX):
            return None
        if settings.user_mode:
            try:
                identity = await gateway.verify(bearer())
            except GatewayError as exc:
                response = refused(exc.status, exc.detail, exc.code.value)
                response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
                return response
            g.user = identity.user
        elif settings.api_key and not has_api_key():
            return refused(401, "Missing or wrong API key", "unauthorized")
        return None

    @bp.after_app_request
    async def cors(response: Response) -> Response:
        return _with_cors(response, policy.check(_origin_request()), preflight=False)

    sessions_budget = RateLimiter(settings.sessions_per_minute, settings.rate_limit_addresses)

    @bp.post(f"{PREFIX}/sessions")
    async def create_session() -> Response:
        address = client_address(
            request.remote_addr, request.headers.get("X-Forwarded-For"), settings.trusted_proxy
        )
        wait = sessions_budget.retry_after(address)
        if wait > 0:
            gateway.metrics.refusals.labels(code="rate_limited").inc()
            response = error_response(429, "Too many sessions created; slow down", "rate_limited")
            response.headers["Retry-After"] = retry_after_header(wait)
            return response
        return json_response(await gateway.create_session(await read_json(), user()), 201)

    @bp.get(f"{PREFIX}/sessions")
    async def list_sessions() -> Response:
        caller = user()
        if caller is None:
            return refused(404, "Sessions are listed per user, in user mode only", "not_found")
        page = await gateway.list_sessions(
            caller, request.args.get("limit"), request.args.get("before")
        )
        return json_response(page)

    @bp.get(f"{PREFIX}/sessions/<session_id>")
    async def get_session(session_id: str) -> Response:
        return json_response(await gateway.get_session(session_id, user()))

    @bp.post(f"{PREFIX}/sessions/<session_id>/messages")
    async def send_message(session_id: str) -> Response:
        body = await read_json()
        remote = request.remote_addr or "?"
        outgoing = gateway.validate_rest_message(session_id, body)
        caller = user()
        await gateway.check_owner(session_id, caller)
        gateway.rate_limit(f"rest:{remote}")
        return json_response(await gateway.send(outgoing, caller), 202)

    worker = settings.worker_index

    def this_worker(answer: Callable[[], Awaitable[Response]]) -> Callable[[], Awaitable[Response]]:
        """Under ``serve --workers`` an operator's request names the worker it is for
        (``?worker=<i>``; the parent routes it there) and its answer closes the
        connection, so the next request is routed afresh rather than reaching this
        worker on a kept-alive connection."""

        @functools.wraps(answer)
        async def answered() -> Response:
            if worker is None:
                return await answer()
            asked = request.args.get("worker")
            # Read as the parent routes it: a number (``01`` is worker 1).
            if asked is not None and not (asked.isdigit() and int(asked) == worker):
                response = refused(
                    421,
                    f"This is worker {worker}; ask for another worker on a new connection",
                    "misdirected",
                )
            else:
                response = await answer()
            response.headers["Connection"] = "close"
            return response

        return answered

    @bp.get("/healthz")
    @this_worker
    async def healthz() -> Response:
        ok, body = await health()
        if not has_api_key():
            # Anonymous callers learn the status only: no URLs, ports or counts.
            body = {"status": body["status"]}
        return json_response(body, 200 if ok else 503)

    @bp.get("/metrics")
    @this_worker
    async def metrics() -> Response:
        return Response(
            gateway.metrics.render(), status=200, content_type=gateway.metrics.content_type
        )

    @bp.app_errorhandler(GatewayError)
    async def gateway_error(exc: GatewayError) -> Response:
        gateway.metrics.refusals.labels(code=exc.code.value).inc()
        response = json_response(exc.body(), exc.status)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = retry_after_header(exc.retry_after)
        return response

    @bp.app_errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        codes = {
            400: "bad_request",
            404: "not_found",
            405: "method_not_allowed",
            413: "message_too_large",
        }
        response = refused(status, exc.description or exc.name, codes.get(status, "error"))
        if status == 413:
            # The unread rest of the body would be taken for the next request.
            response.headers["Connection"] = "close"
        return response

    @bp.app_errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "Internal server error", "internal_error")

    return bp


def _with_cors(response: Response, verdict: Verdict, *, preflight: bool) -> Response:
    if verdict.allow_origin is None:
        return response
    for name, value in verdict.cors_headers():
        response.headers[name] = value
    if preflight:
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
    return response


def configure(app: QuartTrio, max_content_length: int) -> None:
    app.config["MAX_CONTENT_LENGTH"] = max_content_length
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = 30
