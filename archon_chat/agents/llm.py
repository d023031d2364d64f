"""The LLM backend: any OpenAI-compatible ``POST {base}/chat/completions`` with
``stream: true`` (Ollama, llama.cpp server, vLLM, LM Studio, OpenAI).

``ARCHON_CHAT_LLM_BASE_URL`` is the API root, e.g. ``http://localhost:11434/v1``; a URL
that already ends in ``/chat/completions`` is used as is. The reply is read as the
OpenAI streaming format (``data: {json}`` lines, ``choices[0].delta.content``, ended by
``data: [DONE]`` or a ``finish_reason``); a server that ignores ``stream`` and answers one
JSON completion is accepted too. Every failure becomes :class:`LLMError` with a text fit
for the user: the HTTP status and the server's own message, "unreachable", "timed out"
(``llm_timeout_s`` bounds the connect and every wait for the next bytes), or "malformed".
Cancellation closes the upstream connection at once.

One backend owns one :class:`httpx.AsyncClient` (one SSL context, one connection pool with
explicit limits) for all its streams; whoever creates the backend closes it with
:meth:`LLMBackend.aclose` (the agents service does at shutdown).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from archon_chat.agents.errors import LLMError

Emit = Callable[[str], Awaitable[None]]
#: Bytes of an error response kept for the message: enough for any JSON error object.
ERROR_BODY_BYTES = 4096
ERROR_TEXT_CHARS = 300
#: Lines read after the end of a reply so that its connection can be reused.
DRAIN_LINES = 16


def completions_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


class LLMBackend:
    """Streams chat completions from one OpenAI-compatible endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str,
        timeout_s: float,
        *,
        max_connections: int,
        keepalive: int,
    ) -> None:
        self.url = completions_url(base_url)
        self.model = model
        self._api_key = api_key
        self._timeout_s = timeout_s
        parts = urlsplit(self.url)
        self.where = f"{parts.scheme}://{parts.netloc}"  # never the key, never a path secret
        # The pool timeout is the same bound as every other wait: a request that finds all
        # connections busy for that long fails as "timed out", never waits forever.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=min(keepalive, max_connections),
            ),
        )

    async def aclose(self) -> None:
        """Close the connection pool. A checkpoint; closing twice is harmless, and a
        stream started afterwards fails with :class:`LLMError`."""
        await self._client.aclose()

    async def stream(self, messages: Sequence[Mapping[str, str]], emit: Emit) -> None:
        """Send ``messages`` and ``await emit(delta)`` for each piece of the reply.

        A checkpoint. Raises :class:`LLMError`. Cancellation (a client that went away)
        closes the upstream request before it propagates.
        """
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        body = {"model": self.model, "messages": list(messages), "stream": True}
        if self._client.is_closed:
            raise LLMError(f"LLM service at {self.where}: the backend is shut down")
        try:
            async with self._client.stream(
                "POST", self.url, json=body, headers=headers
            ) as response:
                if response.status_code != 200:
                    raise LLMError(await self._status_error(response))
                ctype = response.headers.get("content-type", "")
                if "text/event-stream" in ctype:
                    await self._relay(response, emit)
                elif "json" in ctype:
                    await emit(_completion_text(await _read_json(response)))
                else:
                    raise LLMError(
                        f"LLM service at {self.where} answered with an unexpected content "
                        f"type ({ctype or 'none'}); is ARCHON_CHAT_LLM_BASE_URL the API root?"
                    )
        except httpx.TimeoutException:
            raise LLMError(
                f"LLM service at {self.where} timed out (no data for {self._timeout_s:g} s)"
            ) from None
        except httpx.ConnectError as exc:
            raise LLMError(f"LLM service at {self.where} is unreachable: {exc}") from None
        except httpx.HTTPError as exc:
            raise LLMError(
                f"LLM service at {self.where} broke the connection: {exc or type(exc).__name__}"
            ) from None

    async def _status_error(self, response: httpx.Response) -> str:
        raw = b""
        async for piece in response.aiter_bytes():
            raw += piece
            if len(raw) >= ERROR_BODY_BYTES:
                break
        detail = raw[:ERROR_BODY_BYTES].decode("utf-8", errors="replace").strip()
        try:
            parsed = json.loads(detail)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            err = parsed.get("error", parsed.get("detail", parsed.get("message")))
            if isinstance(err, dict):
                err = err.get("message", err)
            detail = str(err) if err is not None else detail
        text = f"LLM service error: {response.status_code}"
        if response.status_code in (401, 403):
            text += " (check ARCHON_CHAT_LLM_API_KEY)"
        elif response.status_code == 404:
            text += " (check ARCHON_CHAT_LLM_BASE_URL and ARCHON_CHAT_LLM_MODEL)"
        if detail:
            text += f": {' '.join(detail.split())[:ERROR_TEXT_CHARS]}"
        return text

    async def _relay(self, response: httpx.Response, emit: Emit) -> None:
        data: list[str] = []
        lines = response.aiter_lines()
        async for line in lines:
            if line:
                field, _, value = line.partition(":")
                if field == "data":
                    data.append(value[1:] if value.startswith(" ") else value)
                elif field not in ("", "event", "id", "retry"):
                    raise self._malformed(f"unexpected line {line[:60]!r}")
                continue
            if not data:
                continue
            payload, data = "\n".join(data), []
            if payload.strip() == "[DONE]" or await self._handle(payload, emit):
                await _drain(lines)
                return
        if data and "\n".join(data).strip() == "[DONE]":
            return
        raise LLMError(f"LLM service at {self.where} ended the stream before the reply was done")

    async def _handle(self, payload: str, emit: Emit) -> bool:
        """Emit one streamed chunk's text; True once the reply says it is finished."""
        try:
            event = json.loads(payload)
        except ValueError:
            raise self._malformed(f"invalid JSON {payload[:60]!r}") from None
        if not isinstance(event, dict):
            raise self._malformed("an event is not a JSON object")
        if "error" in event:
            err = event["error"]
            message = err.get("message", err) if isinstance(err, dict) else err
            text = " ".join(str(message).split())[:ERROR_TEXT_CHARS]
            raise LLMError(f"LLM service error: {text}")
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise self._malformed("an event has no choices")
        finished = False
        for choice in choices[:1]:  # we ask for one completion
            if not isinstance(choice, dict):
                raise self._malformed("a choice is not an object")
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                await emit(content)
            finished = choice.get("finish_reason") is not None
        return finished

    def _malformed(self, what: str) -> LLMError:
        return LLMError(f"LLM service at {self.where} sent a malformed stream: {what}")


async def _drain(lines: AsyncIterator[str]) -> None:
    """Read what follows the end of a reply (``[DONE]``, a usage chunk) up to the end of
    the response, so its connection goes back to the pool instead of being dropped; a
    server that keeps talking past ``DRAIN_LINES`` lines loses its connection instead."""
    count = 0
    async for _ in lines:
        count += 1
        if count > DRAIN_LINES:
            return


async def _read_json(response: httpx.Response) -> Any:
    raw = await response.aread()
    try:
        return json.loads(raw)
    except ValueError:
        raise LLMError("LLM service sent invalid JSON") from None


def _completion_text(body: Any) -> str:
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LLMError("LLM service sent a completion without choices[0].message") from None
    if not isinstance(content, str):
        raise LLMError("LLM service sent a completion whose content is not text")
    return content
