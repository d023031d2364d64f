"""The cluster's wire codec: literal wire forms, round trips, batch caps and strict decoding.

Synchronous and pure. Property tests run the same examples every time (``derandomize``);
the fuzz tests feed random bytes, random JSON and valid messages with one part replaced,
and accept only a decoded value or :class:`CodecError` (those over JSON take a few seconds:
marked slow).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.chat.messages import (
    AGENT_TYPES,
    CancelReason,
    CancelTurn,
    ChatMessage,
    ChunkStreamed,
    ErrorCode,
    MessageEmitted,
    MessageStatus,
    SessionEvent,
    StreamCompleted,
    SubmitMessage,
    SubmitOutcome,
    SubmitReply,
    TurnEnded,
    TurnFailed,
    TurnStarted,
    TurnState,
    TypingChanged,
)
from archon_chat.cluster.codec import (
    EVENT_KINDS,
    MAX_INT,
    Batch,
    BatchWriter,
    CodecError,
    Reply,
    Request,
    cancel_args,
    cancel_from_args,
    decode_batch,
    decode_event,
    decode_message,
    dumps_event,
    encode_batch,
    encode_event,
    encode_reply,
    encode_request,
    get_turn_state_args,
    get_turn_state_from_args,
    loads_event,
    message_from_json,
    message_to_json,
    submit_args,
    submit_from_args,
    submit_reply_from_json,
    submit_reply_to_json,
    turn_state_from_json,
    turn_state_to_json,
)

CAP = 1 << 20
examples = settings(max_examples=200, deadline=None, derandomize=True)

# ---------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------

texts = st.text(max_size=20)
seqs = st.integers(0, MAX_INT)
statuses = st.sampled_from(MessageStatus)
codes = st.sampled_from(ErrorCode)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
messages = st.builds(
    ChatMessage,
    id=texts,
    session_id=texts,
    seq=seqs,
    content=st.text(max_size=200),
    sender=st.sampled_from(["user", "agent"]),
    timestamp=texts,
    agent_type=st.sampled_from(AGENT_TYPES),
    status=statuses,
    error=st.none() | st.tuples(texts, texts),
    client_message_id=st.none() | texts,
)
events: st.SearchStrategy[SessionEvent] = st.one_of(
    st.builds(ChunkStreamed, texts, seqs, texts, st.text(max_size=200)),
    st.builds(MessageEmitted, texts, seqs, messages),
    st.builds(StreamCompleted, texts, seqs, texts, statuses),
    st.builds(TypingChanged, texts, seqs, st.booleans()),
    st.builds(TurnFailed, texts, seqs, texts, codes, texts),
    st.builds(TurnStarted, texts, seqs, texts),
    st.builds(
        TurnEnded,
        texts,
        seqs,
        texts,
        statuses,
        st.none() | codes,
        st.none() | st.floats(allow_nan=False, allow_infinity=False),
    ),
)
owned = st.tuples(st.sampled_from(["n1", "n2", "nœud-3"]) | texts, seqs, events)
turn_states = st.builds(
    TurnState,
    last_seq=seqs,
    typing=st.booleans(),
    turn=st.none() | st.tuples(texts, seqs),
    events=st.lists(events, max_size=5).map(tuple),
)


def example_events() -> list[SessionEvent]:
    message = ChatMessage("m1", "s", 3, "hi", "agent", "2026-01-01T00:00:00+00:00", "rag")
    return [
        ChunkStreamed("s", 1, "m1", "a"),
        MessageEmitted("s", 3, message),
        StreamCompleted("s", 4, "m1", MessageStatus.CANCELLED),
        TypingChanged("s", 5, True),
        TurnFailed("s", 6, "m1", ErrorCode.AGENT_TIMEOUT, "slow"),
        TurnStarted("s", 7, "m1"),
        TurnEnded("s", 8, "m1", MessageStatus.FAILED, ErrorCode.AGENT_ERROR, 0.25),
    ]


# ---------------------------------------------------------------------------------------
# Literal wire forms
# ---------------------------------------------------------------------------------------


def test_every_event_class_has_a_kind_and_an_example() -> None:
    assert {type(e) for e in example_events()} == set(EVENT_KINDS)
    assert len(set(EVENT_KINDS.values())) == len(EVENT_KINDS)
    for event in example_events():
        assert encode_event(event)[0] == EVENT_KINDS[type(event)]


def test_literal_forms() -> None:
    assert encode_event(ChunkStreamed("s1", 9, "m1", "hé", read_at=12.5)) == [
        "c",
        "s1",
        9,
        "m1",
        "hé",
    ]
    assert encode_event(TurnEnded("s", 8, "m", MessageStatus.COMPLETE)) == [
        "e",
        "s",
        8,
        "m",
        "complete",
        None,
        None,
    ]
    assert dumps_event(TypingChanged("s", 2, False)) == b'["t","s",2,false]'
    batch = encode_batch(
        [
            ("n1", 4, ChunkStreamed("s1", 9, "m1", 'a"é\n')),
            ("n2", 1, TurnStarted("s2", 3, "m2")),
            ("n1", 4, ChunkStreamed("s1", 10, "m1", "b")),
        ]
    )
    assert batch == (
        b'B[["n1","n2"],[0,4,"c","s1",9,"m1","a\\"\xc3\xa9\\n"],'
        b'[1,1,"s","s2",3,"m2"],[0,4,"c","s1",10,"m1","b"]]'
    )
    assert encode_batch([]) == b"B[[]]"
    assert encode_request(7, "n1", "submit", "s1", {"a": 1}) == b'Q[7,"n1","submit","s1",{"a":1}]'
    assert encode_reply(7, False, "gone") == b'R[7,false,"gone"]'


def test_decode_message_tells_the_three_apart() -> None:
    event = ("n1", 4, ChunkStreamed("s1", 9, "m1", "x"))
    assert decode_message(encode_batch([event]), max_bytes=CAP) == Batch((event,))
    assert decode_message(encode_request(1, "n", "k", "s", {}), max_bytes=CAP) == Request(
        1, "n", "k", "s", {}
    )
    assert decode_message(encode_reply(2, True, [1, None]), max_bytes=CAP) == Reply(
        2, True, [1, None]
    )


def test_chunk_read_at_is_not_carried() -> None:
    data = encode_batch([("n", 1, ChunkStreamed("s", 1, "m", "x", read_at=99.0))])
    [(_, _, chunk)] = decode_batch(data, max_bytes=CAP)
    assert isinstance(chunk, ChunkStreamed)
    assert chunk.read_at == 0.0
    chunk = decode_event(encode_event(ChunkStreamed("s", 1, "m", "x", 5.0)))
    assert isinstance(chunk, ChunkStreamed)
    assert chunk.read_at == 0.0


def test_lone_surrogates_round_trip() -> None:
    odd = "a\ud800b\udfff"
    event = ChunkStreamed(odd, 1, odd, odd)
    assert decode_batch(encode_batch([(odd, 1, event)]), max_bytes=CAP) == [(odd, 1, event)]
    assert loads_event(dumps_event(event), max_bytes=CAP) == event
    request = decode_message(encode_request(1, odd, odd, odd, {odd: odd}), max_bytes=CAP)
    assert request == Request(1, odd, odd, odd, {odd: odd})


# ---------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------


@examples
@given(events)
def test_event_round_trip(event: SessionEvent) -> None:
    encoded = encode_event(event)
    assert decode_event(encoded) == event
    assert decode_event(json.loads(json.dumps(encoded))) == event
    assert loads_event(dumps_event(event), max_bytes=CAP) == event
    assert type(decode_event(encoded)) is type(event)


@examples
@given(messages)
def test_message_round_trip(message: ChatMessage) -> None:
    assert message_from_json(json.loads(json.dumps(message_to_json(message)))) == message


@examples
@given(st.lists(owned, max_size=8))
def test_batch_round_trip(items: list[tuple[str, int, SessionEvent]]) -> None:
    data = encode_batch(items)
    assert decode_batch(data, max_bytes=CAP) == items
    assert decode_message(data, max_bytes=CAP) == Batch(tuple(items))


@examples
@given(seqs, texts, texts, texts, st.dictionaries(texts, json_values, max_size=4))
def test_request_round_trip(
    req_id: int, origin: str, kind: str, session_id: str, args: dict[str, Any]
) -> None:
    data = encode_request(req_id, origin, kind, session_id, args)
    assert decode_message(data, max_bytes=CAP) == Request(req_id, origin, kind, session_id, args)


@examples
@given(seqs, st.booleans(), json_values)
def test_reply_round_trip(req_id: int, ok: bool, result: Any) -> None:
    assert decode_message(encode_reply(req_id, ok, result), max_bytes=CAP) == Reply(
        req_id, ok, result
    )


def through_wire(obj: Any) -> Any:
    """``obj`` as a routed request's arguments would bring it back."""
    decoded = decode_message(encode_reply(1, True, obj), max_bytes=CAP)
    assert isinstance(decoded, Reply)
    return decoded.result


@examples
@given(turn_states)
def test_turn_state_round_trip(state: TurnState) -> None:
    assert turn_state_from_json(through_wire(turn_state_to_json(state))) == state


@examples
@given(st.text(max_size=50), st.dictionaries(texts, json_values, max_size=4), st.none() | texts)
def test_submit_round_trip(content: str, context: dict[str, Any], client_id: str | None) -> None:
    send, _ = trio.open_memory_channel[SubmitReply](1)
    command = SubmitMessage(content, context, client_id, reply=send)
    back = submit_from_args(through_wire(submit_args(command)), reply=send)
    assert back == command
    assert submit_from_args(through_wire(submit_args(command))).reply is None


@pytest.mark.parametrize("outcome", list(SubmitOutcome))
@pytest.mark.parametrize("message_id", [None, "m1"])
def test_submit_reply_round_trip(outcome: SubmitOutcome, message_id: str | None) -> None:
    reply = SubmitReply(outcome, message_id)
    assert submit_reply_from_json(through_wire(submit_reply_to_json(reply))) == reply


@pytest.mark.parametrize("reason", list(CancelReason))
def test_cancel_round_trip(reason: CancelReason) -> None:
    assert cancel_args(CancelTurn(reason)) == {"reason": reason.value}
    assert cancel_from_args(through_wire(cancel_args(CancelTurn(reason)))) == CancelTurn(reason)


@pytest.mark.parametrize("after_seq", [None, 0, 17])
def test_get_turn_state_round_trip(after_seq: int | None) -> None:
    send, _ = trio.open_memory_channel[TurnState](1)
    command = get_turn_state_from_args(through_wire(get_turn_state_args(after_seq)), send)
    assert command.after_seq == after_seq
    assert command.reply is send


# ---------------------------------------------------------------------------------------
# Batch writer
# ---------------------------------------------------------------------------------------


@examples
@given(st.lists(owned, min_size=1, max_size=12), st.integers(1, 400))
def test_writer_caps_batches_and_keeps_order(
    items: list[tuple[str, int, SessionEvent]], max_bytes: int
) -> None:
    writer = BatchWriter(max_bytes)
    batches: list[bytes] = []
    current: list[tuple[str, int, SessionEvent]] = []
    for item in items:
        if not writer.add(*item):
            assert len(encode_batch([*current, item])) > max_bytes
            batches.append(writer.finish())
            current = []
            assert writer.add(*item)  # an empty batch takes anything
        current.append(item)
        assert (len(writer), writer.size) == (len(current), len(encode_batch(current)))
    batches.append(writer.finish())
    decoded = [e for b in batches for e in decode_batch(b, max_bytes=CAP)]
    assert decoded == items
    for data in batches:
        assert len(data) <= max_bytes or len(decode_batch(data, max_bytes=CAP)) == 1


def test_writer_refuses_without_changing_and_resets_on_finish() -> None:
    first = ("n1", 1, ChunkStreamed("s", 1, "m", "x" * 10))
    alone = len(encode_batch([first]))
    writer = BatchWriter(alone + 5)
    assert writer.add(*first)
    assert (len(writer), writer.size) == (1, alone)
    assert not writer.add("n2", 1, ChunkStreamed("s", 2, "m", "y"))  # a new owner too
    assert (len(writer), writer.size) == (1, alone)
    assert writer.finish() == encode_batch([first])
    assert (len(writer), writer.size, writer.finish()) == (0, 5, b"B[[]]")
    big = ("n3", 2, ChunkStreamed("s", 3, "m", "z" * 100))
    assert writer.add(*big)
    assert decode_batch(writer.finish(), max_bytes=CAP) == [big]
    with pytest.raises(ValueError, match="positive"):
        BatchWriter(0)


def test_encoding_an_unknown_event_class_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="SessionEvent"):
        encode_event(SessionEvent("s", 1))


# ---------------------------------------------------------------------------------------
# Strict decoding
# ---------------------------------------------------------------------------------------

GOOD_CHUNK = '[0,1,"c","s",2,"m","x"]'


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "unknown message type"),
        (b"X[]", "unknown message type"),
        (b"B", "not JSON"),
        (b"B[[]] ", "after its JSON"),
        (b"B [[]]", "not JSON"),
        (b"B[[]][]", "after its JSON"),
        (b"B[[\xff]]", "not JSON"),
        (b"B{}", "batch must be an array"),
        (b"B[]", "owners"),
        (b'B["n"]', "owners must be an array"),
        (b"B[[1]]", "owner must be a string"),
        (b'B[["n"],' + b"[0,1]]", "item 1"),
        (b'B[["n"],' + b'{"a":1}]', "item 1"),
        (b'B[["n"],' + GOOD_CHUNK.replace("[0,", "[1,").encode() + b"]", "names no owner"),
        (b'B[["n"],' + GOOD_CHUNK.replace("[0,", "[true,").encode() + b"]", "names no owner"),
        (b'B[["n"],' + GOOD_CHUNK.replace(",1,", ",-1,").encode() + b"]", "epoch"),
        (b'B[["n"],' + GOOD_CHUNK.replace(",1,", ",1.0,").encode() + b"]", "epoch"),
        (b'B[["n"],' + GOOD_CHUNK.replace(",2,", ",true,").encode() + b"]", "seq"),
        (b'B[["n"],' + GOOD_CHUNK.replace(",2,", ",2.5,").encode() + b"]", "seq"),
        (b'B[["n"],' + GOOD_CHUNK.replace(",2,", f",{2**63},").encode() + b"]", "seq"),
        (b'B[["n"],' + GOOD_CHUNK.replace('"x"', "null").encode() + b"]", "content"),
        (b'B[["n"],' + GOOD_CHUNK.replace('"s"', "[]").encode() + b"]", "session_id"),
        (b'B[["n"],' + GOOD_CHUNK.replace('"c"', '"z"').encode() + b"]", "unknown event kind"),
        (b'B[["n"],' + GOOD_CHUNK.replace('"c"', "[]").encode() + b"]", "unknown event kind"),
        (b'B[["n"],' + GOOD_CHUNK.replace('"x"', '"x",1').encode() + b"]", "5 items"),
        (b'B[["n"],[0,1,"t","s",2,1]]', "is_typing"),
        (b'B[["n"],[0,1,"d","s",2,"m","done"]]', "status"),
        (b'B[["n"],[0,1,"f","s",2,"m","nope","e"]]', "code"),
        (b'B[["n"],[0,1,"e","s",2,"m","failed",null,1]]', "first_chunk_latency_s"),
        (b'B[["n"],[0,1,"e","s",2,"m","failed",null,NaN]]', "NaN is not a JSON number"),
        (b'B[["n"],[0,1,"e","s",2,"m","failed",null,Infinity]]', "Infinity"),
        (b'B[["n"],[0,1,"e","s",2,"m","failed",null,1e400]]', "out of range"),
        (b'B[["n"],[0,1,"m","s",2,{}]]', "message must have the keys"),
        (b'B[["n"],[0,1,"m","s",2,[]]]', "message must be an object"),
        (b"B[[" + b"[" * 100_000 + b"]]", "not JSON"),
        (b"R[1,true," + b"9" * 5000 + b"]", "not JSON"),
        (b"Q[1,2,3,4,5]", "origin"),
        (b'Q[1,"n","k","s",[]]', "args"),
        (b'Q[1,"n","k","s"]', "5 items"),
        (b"Q{}", "request must be an array"),
        (b'R[1,1,"x"]', "ok"),
        (b'R[1.0,true,"x"]', "req_id"),
        (b"R[]", "3 items"),
    ],
)
def test_refused(data: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        decode_message(data, max_bytes=CAP)


def test_message_fields_are_checked() -> None:
    good = message_to_json(
        ChatMessage("m", "s", 1, "hi", "user", "t", "rag", error=("agent_error", "x"))
    )
    assert message_from_json(good).error == ("agent_error", "x")
    for key, bad, match in [
        ("sender", "bot", "sender"),
        ("agent_type", "chat", "agent_type"),
        ("status", "COMPLETE", "status"),
        ("error", ["a"], "2 items"),
        ("error", ["a", 1], "error text"),
        ("seq", False, "seq"),
        ("client_message_id", 5, "client_message_id"),
    ]:
        with pytest.raises(CodecError, match=match):
            message_from_json({**good, key: bad})
    with pytest.raises(CodecError, match="missing: none; extra: 'more'"):
        message_from_json({**good, "more": 1})


def test_payload_helpers_are_strict() -> None:
    with pytest.raises(CodecError, match="context"):
        submit_from_args({"content": "x", "context": [], "client_message_id": None})
    with pytest.raises(CodecError, match="submit args"):
        submit_from_args({"content": "x"})
    with pytest.raises(CodecError, match="outcome"):
        submit_reply_from_json({"outcome": "ok", "message_id": None})
    with pytest.raises(CodecError, match="reason"):
        cancel_from_args({"reason": "STOP"})
    send, _ = trio.open_memory_channel[TurnState](1)
    with pytest.raises(CodecError, match="after_seq"):
        get_turn_state_from_args({"after_seq": "3"}, send)
    state = turn_state_to_json(TurnState(3, True, ("m", 2), tuple(example_events())))
    assert turn_state_from_json(state).events == tuple(example_events())
    for key, bad, match in [
        ("turn", ["m"], "2 items"),
        ("turn", ["m", -1], "turn seq"),
        ("typing", 0, "typing"),
        ("events", [["c"]], "5 items"),
        ("events", {}, "turn events"),
    ]:
        with pytest.raises(CodecError, match=match):
            turn_state_from_json({**state, key: bad})


def test_size_cap() -> None:
    data = encode_batch([("n", 1, ChunkStreamed("s", 1, "m", "x" * 100))])
    assert decode_batch(data, max_bytes=len(data)) != []
    with pytest.raises(CodecError, match=f"batch of {len(data)} bytes is over the cap"):
        decode_batch(data, max_bytes=len(data) - 1)
    with pytest.raises(CodecError, match="over the cap"):
        decode_message(data, max_bytes=len(data) - 1)
    request = encode_request(1, "n", "k", "s", {"a": "x" * 100})
    with pytest.raises(CodecError, match="request of"):
        decode_message(request, max_bytes=100)
    with pytest.raises(CodecError, match="event of"):
        loads_event(dumps_event(ChunkStreamed("s", 1, "m", "x" * 100)), max_bytes=100)
    with pytest.raises(CodecError, match="not a batch"):
        decode_batch(encode_reply(1, True, None), max_bytes=CAP)


# ---------------------------------------------------------------------------------------
# Fuzz: only a value or CodecError comes out
# ---------------------------------------------------------------------------------------

fuzz = settings(max_examples=600, deadline=None, derandomize=True)


def decode_or_refuse(data: bytes) -> None:
    try:
        decode_message(data, max_bytes=4096)
    except CodecError:
        pass
    try:
        loads_event(data, max_bytes=4096)
    except CodecError:
        pass


@fuzz
@given(st.sampled_from([b"", b"B", b"Q", b"R"]), st.binary(max_size=64))
def test_random_bytes(tag: bytes, data: bytes) -> None:
    decode_or_refuse(tag + data)


@pytest.mark.slow
@fuzz
@given(st.sampled_from(["B", "Q", "R", ""]), json_values)
def test_random_json(tag: str, value: Any) -> None:
    decode_or_refuse((tag + json.dumps(value)).encode())
    for read in (
        decode_event,
        message_from_json,
        turn_state_from_json,
        submit_from_args,
        submit_reply_from_json,
        cancel_from_args,
    ):
        try:
            read(value)
        except CodecError:
            pass


def replace_at(value: Any, path: list[int], new: Any) -> Any:
    """``value`` (nested lists and dicts) with the part at ``path`` (indices modulo the
    container sizes) replaced by ``new``."""
    if not path or not isinstance(value, (list, dict)) or not value:
        return new
    if isinstance(value, list):
        i = path[0] % len(value)
        return [*value[:i], replace_at(value[i], path[1:], new), *value[i + 1 :]]
    key = list(value)[path[0] % len(value)]
    return {**value, key: replace_at(value[key], path[1:], new)}


@pytest.mark.slow
@fuzz
@given(
    st.lists(owned, min_size=1, max_size=3),
    st.lists(st.integers(0, 50), max_size=5),
    json_values,
)
def test_batches_with_one_part_replaced(
    items: list[tuple[str, int, SessionEvent]], path: list[int], new: Any
) -> None:
    value = json.loads(encode_batch(items)[1:])
    decode_or_refuse(b"B" + json.dumps(replace_at(value, path, new)).encode())


@pytest.mark.slow
@fuzz
@given(turn_states, st.lists(st.integers(0, 50), max_size=6), json_values)
def test_turn_states_with_one_part_replaced(state: TurnState, path: list[int], new: Any) -> None:
    try:
        turn_state_from_json(replace_at(turn_state_to_json(state), path, new))
    except CodecError:
        pass
