"""User mode end to end: a real gateway (HS256 secret, or a JWKS served on 127.0.0.1 port
0), python-socketio clients and httpx; two users, each with sessions.

Real clock (real servers, threads). Every test runs under ``trio.fail_after(CEILING_S)``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import h11
import httpx
import jwt
import pytest
import socketio
import trio
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .agents_fake import AgentsFake
from .support import Client, gateway_settings, running_gateway, turn_done
from .test_socketio_npm import run_node

pytestmark = pytest.mark.slow

CEILING_S = 30
SECRET = "a-secret-of-at-least-32-bytes-for-hs256!"
AUDIENCE = "archon-chat"
ISSUER = "https://host.example"
API = "/api/agent-chat"


def token(
    user: str,
    *,
    ttl_s: float = 300,
    key: Any = SECRET,
    alg: str = "HS256",
    kid: str | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"sub": user, "iat": now, "exp": int(now + ttl_s)}
    body.update(aud=AUDIENCE, iss=ISSUER)
    body.update(claims)
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def user_settings(tmp_path: Path, agents_url: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "jwt_secret": SECRET,
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
        "jwt_leeway_s": 0.0,
    }
    values.update(overrides)
    return gateway_settings(tmp_path, agents_url, **values)


async def new_session(http: httpx.AsyncClient, url: str, tok: str) -> str:
    response = await http.post(f"{url}{API}/sessions", json={}, headers=bearer(tok))
    assert response.status_code == 201, response.text
    session_id: str = response.json()["session_id"]
    return session_id


async def refusal(url: str, auth: Any) -> Any:
    """The ``connect_error`` data a connection with ``auth`` is refused with."""
    client = Client(url, transports=["websocket"])
    errors: list[Any] = []
    client.sio.on("connect_error", errors.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(auth=auth)
    assert len(errors) == 1
    return errors[0]


async def user_client(url: str, tok: str) -> Client:
    client = Client(url, transports=["websocket"])
    await client.connect(auth={"token": tok})
    return client


async def test_another_users_session_answers_like_an_unknown_one(tmp_path: Path) -> None:
    with trio.fail_after(CEILING_S):
        agents = AgentsFake(delay_s=0.02)
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with (
                running_gateway(user_settings(tmp_path, agents.url)) as gw,
                httpx.AsyncClient(timeout=10) as http,
            ):
                alice, bob = token("alice"), token("bob")
                mine = await new_session(http, gw.url, alice)
                theirs = await new_session(http, gw.url, bob)
                unknown = "0" * 32

                # REST: read and send, across users, exactly like an unknown id.
                for method, path, body in (
                    ("GET", "", None),
                    ("POST", "/messages", {"message": "hi"}),
                ):
                    answers = []
                    for target in (theirs, unknown):
                        response = await http.request(
                            method,
                            f"{gw.url}{API}/sessions/{target}{path}",
                            json=body,
                            headers=bearer(alice),
                        )
                        answers.append((response.status_code, response.json()))
                    assert (
                        answers[0]
                        == answers[1]
                        == (404, {"detail": "Session not found", "code": "session_not_found"})
                    )
                own = await http.get(f"{gw.url}{API}/sessions/{mine}", headers=bearer(alice))
                assert own.status_code == 200

                a = await user_client(gw.url, alice)
                b = await user_client(gw.url, bob)
                try:
                    assert (await b.call("join_chat", {"session_id": theirs}))["status"] == "joined"
                    # Every event, across users, answers as for an unknown session.
                    for event, extra in (
                        ("join_chat", {}),
                        ("chat_message", {"message": "hi"}),
                        ("stop_response", {}),
                        ("leave_chat", {}),
                    ):
                        acks = [
                            await a.call(event, {"session_id": sid, **extra})
                            for sid in (theirs, unknown)
                        ]
                        answers = [{k: v for k, v in x.items() if k != "session_id"} for x in acks]
                        assert answers[0] == answers[1], (event, acks)
                        if event != "leave_chat":
                            assert acks[0]["code"] == "session_not_found"
                    # Bob's turn reaches Bob only; Alice, who tried everything, sees none of it.
                    ack = await b.call("chat_message", {"session_id": theirs, "message": "slow"})
                    assert ack["status"] == "sent"
                    await b.wait_for(turn_done, timeout=10)
                    assert not [
                        d for n, d in a.snapshot() if n != "error" and d.get("session_id") == theirs
                    ]
                    refusals = [d for n, d in a.snapshot(("error",))]
                    assert {d["code"] for d in refusals} == {"session_not_found"}
                    # The listing holds one's own sessions only.
                    listed = await http.get(f"{gw.url}{API}/sessions", headers=bearer(alice))
                    assert [s["session_id"] for s in listed.json()["sessions"]] == [mine]
                finally:
                    await a.disconnect()
                    await b.disconnect()
            nursery.cancel_scope.cancel()


async def test_sessions_are_listed_newest_first_in_pages(tmp_path: Path) -> None:
    with trio.fail_after(CEILING_S):
        async with (
            running_gateway(user_settings(tmp_path, "http://127.0.0.1:9")) as gw,
            httpx.AsyncClient(timeout=10) as http,
        ):
            alice = token("alice")
            made = [await new_session(http, gw.url, alice) for _ in range(5)]
            await new_session(http, gw.url, token("bob"))
            seen: list[str] = []
            cursor: str | None = None
            pages = 0
            while True:
                params = {"limit": "2", **({"before": cursor} if cursor else {})}
                response = await http.get(
                    f"{gw.url}{API}/sessions", params=params, headers=bearer(alice)
                )
                assert response.status_code == 200, response.text
                page = response.json()
                seen += [s["session_id"] for s in page["sessions"]]
                pages += 1
                cursor = page["next"]
                if cursor is None:
                    break
            assert seen == list(reversed(made))
            assert pages == 3
            for bad in ({"limit": "0"}, {"limit": "x"}, {"before": "!!"}, {"limit": "1000"}):
                response = await http.get(
                    f"{gw.url}{API}/sessions", params=bad, headers=bearer(alice)
                )
                assert response.status_code == 422, (bad, response.text)


async def test_bad_tokens_are_refused(tmp_path: Path) -> None:
    with trio.fail_after(CEILING_S):
        async with (
            running_gateway(user_settings(tmp_path, "http://127.0.0.1:9")) as gw,
            httpx.AsyncClient(timeout=10) as http,
        ):
            good = token("alice")
            head, body, _ = good.split(".")
            foreign = token("alice", key="another-secret-of-32-bytes-or-more!!").split(".")[2]
            unsigned = jwt.encode(
                {"sub": "alice", "exp": int(time.time()) + 300, "aud": AUDIENCE, "iss": ISSUER},
                None,
                algorithm="none",
            )
            cases = {
                "missing": None,
                "forged signature": f"{head}.{body}.{foreign}",
                "alg none": unsigned,
                "wrong audience": token("alice", aud="someone-else"),
                "wrong issuer": token("alice", iss="https://evil.example"),
                "no sub": jwt.encode(
                    {"exp": int(time.time()) + 300, "aud": AUDIENCE, "iss": ISSUER}, SECRET
                ),
                "not yet valid": token("alice", nbf=int(time.time()) + 120),
                "garbage": "not.a.jwt",
                "the api key scheme": "k",
            }
            for name, bad in cases.items():
                headers = bearer(bad) if bad is not None else {}
                response = await http.post(f"{gw.url}{API}/sessions", json={}, headers=headers)
                assert response.status_code == 401, (name, response.text)
                assert response.json()["code"] == "unauthorized", name
                refused = await refusal(gw.url, {"token": bad} if bad is not None else None)
                assert refused["code"] == "unauthorized", name
            expired = token("alice", ttl_s=-5)
            response = await http.post(f"{gw.url}{API}/sessions", json={}, headers=bearer(expired))
            assert response.status_code == 401
            assert response.json()["code"] == "token_expired"
            assert (await refusal(gw.url, {"token": expired}))["code"] == "token_expired"
            # Static files and health stay open.
            assert (await http.get(f"{gw.url}/healthz")).status_code in (200, 503)


async def test_a_token_expiring_mid_stream(tmp_path: Path) -> None:
    with trio.fail_after(CEILING_S):
        agents = AgentsFake(delay_s=0.05)
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            settings = user_settings(tmp_path, agents.url, token_refresh_window_s=1.0)
            async with (
                running_gateway(settings) as gw,
                httpx.AsyncClient(timeout=10) as http,
            ):
                session_id = await new_session(http, gw.url, token("alice"))
                short = token("alice", ttl_s=2.5)
                lapsing = await user_client(gw.url, short)
                refreshing = await user_client(gw.url, short)
                try:
                    for client in (lapsing, refreshing):
                        ack = await client.call("join_chat", {"session_id": session_id})
                        assert ack["status"] == "joined"
                    ack = await lapsing.call(
                        "chat_message", {"session_id": session_id, "message": "endless"}
                    )
                    assert ack["status"] == "sent"
                    await lapsing.wait_event("stream_chunk")
                    # Told first, both of them, while the stream runs.
                    for client in (lapsing, refreshing):
                        notice = await client.wait_event(
                            "error", lambda d: d["code"] == "token_expired", timeout=5
                        )
                        assert notice["session_id"] is None
                    refreshed = await refreshing.call(
                        "refresh_token", {"token": token("alice", ttl_s=60)}
                    )
                    assert refreshed["status"] == "refreshed"
                    # Someone else's token cannot take the socket over.
                    other = await refreshing.call("refresh_token", {"token": token("bob")})
                    assert other["code"] == "unauthorized"
                    deadline = time.monotonic() + 5
                    while lapsing.sio.connected:
                        assert time.monotonic() < deadline, "not disconnected at expiry"
                        await trio.sleep(0.05)
                    assert (
                        time.time() >= jwt.decode(short, options={"verify_signature": False})["exp"]
                    )
                    assert refreshing.sio.connected
                    seen = len(refreshing.snapshot(("stream_chunk",)))
                    await refreshing.wait_for(
                        lambda evs: sum(n == "stream_chunk" for n, _ in evs) > seen + 3
                    )
                finally:
                    await lapsing.disconnect()
                    await refreshing.disconnect()
            nursery.cancel_scope.cancel()


async def test_limits_per_user(tmp_path: Path) -> None:
    with trio.fail_after(CEILING_S):
        agents = AgentsFake(delay_s=0.05)
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            settings = user_settings(
                tmp_path,
                agents.url,
                user_max_sessions=3,
                user_messages_per_minute=2,
                user_concurrent_turns=1,
                user_max_connections=2,
            )
            async with running_gateway(settings) as gw, httpx.AsyncClient(timeout=10) as http:
                alice, bob = token("alice"), token("bob")
                one, two, _ = [await new_session(http, gw.url, alice) for _ in range(3)]
                refused = await http.post(f"{gw.url}{API}/sessions", json={}, headers=bearer(alice))
                assert refused.status_code == 429
                assert refused.json()["code"] == "rate_limited"
                await new_session(http, gw.url, bob)  # bob has his own budget

                a = await user_client(gw.url, alice)
                b = await user_client(gw.url, alice)
                try:
                    assert (await refusal(gw.url, {"token": alice}))["code"] == "rate_limited"
                    ack = await a.call("join_chat", {"session_id": one})
                    assert ack["status"] == "joined"
                    ack = await a.call("chat_message", {"session_id": one, "message": "endless"})
                    assert ack["status"] == "sent"
                    await a.wait_event("typing", lambda d: d["is_typing"])
                    # One reply in progress at a time for alice, whichever socket asks.
                    ack = await b.call("chat_message", {"session_id": two, "message": "hi"})
                    assert ack["code"] == "rate_limited"
                    # Messages a minute, over sockets and REST together (2 spent above).
                    sent = await http.post(
                        f"{gw.url}{API}/sessions/{one}/messages",
                        json={"message": "queued"},
                        headers=bearer(alice),
                    )
                    assert sent.status_code == 202, sent.text
                    limited = await http.post(
                        f"{gw.url}{API}/sessions/{one}/messages",
                        json={"message": "too many"},
                        headers=bearer(alice),
                    )
                    assert limited.status_code == 429
                    assert limited.json()["code"] == "rate_limited"
                    assert int(limited.headers["Retry-After"]) >= 1
                finally:
                    await a.disconnect()
                    await b.disconnect()
            nursery.cancel_scope.cancel()


async def test_the_npm_client_across_users(tmp_path: Path) -> None:
    with trio.fail_after(CEILING_S):
        agents = AgentsFake(delay_s=0.02)
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with (
                running_gateway(user_settings(tmp_path, agents.url)) as gw,
                httpx.AsyncClient(timeout=10) as http,
            ):
                alice, bob = token("alice"), token("bob")
                await new_session(http, gw.url, alice)
                bobs = await new_session(http, gw.url, bob)
                out = await run_node(
                    gw.url, "users", ["websocket"], TOKEN_A=alice, TOKEN_B=bob, SESSION_B=bobs
                )
            nursery.cancel_scope.cancel()
        acks = out["acks"]
        for event in ("join_chat", "chat_message", "stop_response"):
            assert acks[event]["code"] == "session_not_found", (event, out)
        assert acks["b_join"]["status"] == "joined"
        assert acks["b_send"]["status"] == "sent"
        # Alice got her three refusals and nothing of Bob's turn.
        assert out["seen"]["a"] == [["error", bobs, "session_not_found"]] * 3
        assert ["stream_complete", bobs, None] in out["seen"]["b"]


async def test_a_recovered_connection_is_restored_only_to_its_user(tmp_path: Path) -> None:
    with trio.fail_after(CEILING_S):
        settings_ = user_settings(tmp_path, "http://127.0.0.1:9", grace_s=5.0)
        async with (
            running_gateway(settings_) as gw,
            httpx.AsyncClient(timeout=10) as http,
        ):
            alice = token("alice")
            session_id = await new_session(http, gw.url, alice)
            out = await run_node(
                gw.url,
                "recover_as_other",
                ["websocket"],
                TOKEN_A=alice,
                TOKEN_B=token("bob"),
                SESSION_A=session_id,
            )
        assert out == {
            "join": "joined",
            "sameUser": {"recovered": True},
            "otherUser": {"refused": "unauthorized"},
        }


# -- JWKS ---------------------------------------------------------------------------------


class JwksServer:
    """Serves ``keys`` (a JWKS document) on 127.0.0.1 port 0 and counts the fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.EndOfMessage):
                    self.fetches += 1
                    body = json.dumps({"keys": self.keys}).encode()
                    headers = [("content-type", "application/json"), ("connection", "close")]
                    headers.append(("content-length", str(len(body))))
                    out = conn.send(h11.Response(status_code=200, headers=headers))
                    out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                    await stream.send_all(out)
                    return
                if isinstance(event, (h11.ConnectionClosed, h11.PAUSED)):
                    return


def public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(
        jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key())
    )
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


async def test_jwks_keys_rotate(tmp_path: Path) -> None:
    with trio.fail_after(CEILING_S):
        old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        new = ec.generate_private_key(ec.SECP256R1())
        jwks = JwksServer()
        jwks.keys = [public_jwk(old, "k1", "RS256")]
        async with trio.open_nursery() as nursery:
            await nursery.start(jwks.serve)
            settings = user_settings(
                tmp_path,
                "http://127.0.0.1:9",
                jwt_secret="",
                jwks_url=jwks.url,
                jwks_min_refresh_s=0.5,
            )
            async with running_gateway(settings) as gw, httpx.AsyncClient(timeout=10) as http:

                async def create(tok: str) -> httpx.Response:
                    return await http.post(f"{gw.url}{API}/sessions", json={}, headers=bearer(tok))

                assert (
                    await create(token("alice", key=old, alg="RS256", kid="k1"))
                ).status_code == 201
                assert jwks.fetches == 1
                # An HS256 token is not accepted when only a JWKS is configured, even one
                # "signed" with the public key's text.
                pem_signed = token("alice")
                assert (await create(pem_signed)).status_code == 401
                # The host rotates: k2 published, k1 withdrawn.
                jwks.keys = [public_jwk(new, "k2", "ES256")]
                rotated = token("alice", key=new, alg="ES256", kid="k2")
                await trio.sleep(0.5)  # past jwks_min_refresh_s since the first fetch
                assert (await create(rotated)).status_code == 201
                assert jwks.fetches == 2
                # The withdrawn key no longer signs; unknown kids do not hammer the server.
                assert (
                    await create(token("alice", key=old, alg="RS256", kid="k1"))
                ).status_code == 401
                for n in range(5):
                    made_up = token("alice", key=new, alg="ES256", kid=f"nope{n}")
                    assert (await create(made_up)).status_code == 401
                assert jwks.fetches <= 3
                # A key of one kind cannot verify a token claiming another algorithm.
                jwks.keys.append(public_jwk(old, "k3", "RS256"))
                confused = token("alice", key=new, alg="ES256", kid="k3")
                assert (await create(confused)).status_code == 401
            nursery.cancel_scope.cancel()


async def test_an_oversized_jwks_is_not_read_and_the_keys_held_stay(tmp_path: Path) -> None:
    with trio.fail_after(CEILING_S):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwks = JwksServer()
        jwks.keys = [public_jwk(key, "k1", "RS256")]
        async with trio.open_nursery() as nursery:
            await nursery.start(jwks.serve)
            settings_ = user_settings(
                tmp_path,
                "http://127.0.0.1:9",
                jwt_secret="",
                jwks_url=jwks.url,
                jwks_min_refresh_s=0.0,
                max_jwks_bytes=4096,
            )
            async with running_gateway(settings_) as gw, httpx.AsyncClient(timeout=10) as http:

                async def status(signer: Any, kid: str) -> int:
                    tok = token("alice", key=signer, alg="RS256", kid=kid)
                    answer = await http.post(
                        f"{gw.url}{API}/sessions", json={}, headers=bearer(tok)
                    )
                    return answer.status_code

                assert await status(key, "k1") == 201
                # The set grows past the limit: it is not taken (k2 stays unknown), and the
                # key held still works.
                padding = [{"kty": "oct", "kid": f"pad{n}", "k": "x" * 200} for n in range(40)]
                jwks.keys = [public_jwk(key, "k1", "RS256"), public_jwk(other, "k2", "RS256")]
                jwks.keys += padding
                assert await status(other, "k2") == 401
                assert jwks.fetches == 2
                assert await status(key, "k1") == 201
                # Back under the limit, the new key is taken at the next unknown kid.
                jwks.keys = jwks.keys[:2]
                assert await status(other, "k2") == 201
            nursery.cancel_scope.cancel()


# -- a property: one user's events never reach another's socket -----------------------------

OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["alice", "bob"]),
        st.sampled_from(["join", "send", "stop", "leave", "join_other", "send_other"]),
        st.integers(0, 1),
    ),
    min_size=4,
    max_size=12,
)


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=OPERATIONS)
async def test_interleavings_never_cross_users(tmp_path: Path, operations: list[Any]) -> None:
    with trio.fail_after(CEILING_S):
        agents = AgentsFake(delay_s=0.01)
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            db = tmp_path / f"chat-{time.monotonic_ns()}.db"
            settings_ = user_settings(tmp_path, agents.url, db_path=str(db))
            async with running_gateway(settings_) as gw, httpx.AsyncClient(timeout=10) as http:
                tokens = {user: token(user) for user in ("alice", "bob")}
                sessions = {
                    user: [await new_session(http, gw.url, tok) for _ in range(2)]
                    for user, tok in tokens.items()
                }
                clients = {user: await user_client(gw.url, tok) for user, tok in tokens.items()}
                try:
                    for user, op, n in operations:
                        other = "bob" if user == "alice" else "alice"
                        mine, theirs = sessions[user][n], sessions[other][n]
                        client = clients[user]
                        if op == "join":
                            await client.call("join_chat", {"session_id": mine})
                        elif op == "send":
                            await client.call(
                                "chat_message", {"session_id": mine, "message": "slow"}
                            )
                        elif op == "stop":
                            await client.call("stop_response", {"session_id": mine})
                        elif op == "leave":
                            await client.call("leave_chat", {"session_id": mine})
                        elif op == "join_other":
                            await client.call("join_chat", {"session_id": theirs})
                        else:
                            await client.call(
                                "chat_message", {"session_id": theirs, "message": "x"}
                            )
                    await trio.sleep(0.3)  # let the turns stream a while
                    for user, client in clients.items():
                        foreign = set(sessions["bob" if user == "alice" else "alice"])
                        leaked = [
                            (n, d)
                            for n, d in client.events
                            if isinstance(d, dict)
                            and d.get("session_id") in foreign
                            and not (n == "error" and d.get("code") == "session_not_found")
                        ]
                        assert not leaked, leaked
                finally:
                    for client in clients.values():
                        await client.disconnect()
            nursery.cancel_scope.cancel()
