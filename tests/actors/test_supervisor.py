"""Supervisor: restart types, intensity and escalation, graceful-then-forced shutdown,
child handles and lookup.

Pure trio on ``autojump_clock`` with exact virtual times; every test runs under
``trio.fail_after(100)`` (virtual seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import trio

from actors.runtime import (
    ChildAlreadyStarted,
    ChildHandle,
    ChildNotFound,
    ChildSpec,
    ChildTemplate,
    ExitReason,
    Restart,
    RestartIntensityExceeded,
    SupervisorClosed,
    open_supervisor,
)

CEILING_S = 100


class Boom(Exception):
    pass


class Script:
    """A child function that records its starts and then does what it is told."""

    def __init__(self, behaviour: Callable[[int], object] | None = None) -> None:
        self.starts: list[float] = []
        self.ends: list[tuple[float, str]] = []
        self.stop_requested = trio.Event()

    def stop(self) -> None:
        self.stop_requested.set()

    async def crash_after(self, seconds: float) -> None:
        self.starts.append(trio.current_time())
        await trio.sleep(seconds)
        raise Boom(f"crash {len(self.starts)}")

    async def return_after(self, seconds: float) -> None:
        self.starts.append(trio.current_time())
        await trio.sleep(seconds)

    async def until_stopped(self) -> None:
        self.starts.append(trio.current_time())
        try:
            await self.stop_requested.wait()
            self.ends.append((trio.current_time(), "stopped"))
        except trio.Cancelled:
            self.ends.append((trio.current_time(), "cancelled"))
            raise

    async def forever(self) -> None:
        self.starts.append(trio.current_time())
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.ends.append((trio.current_time(), "cancelled"))
            raise


async def test_crashes_within_intensity_are_restarted_then_escalate(
    autojump_clock: object,
) -> None:
    script = Script()
    with trio.fail_after(CEILING_S):
        with pytest.RaisesGroup(
            pytest.RaisesExc(RestartIntensityExceeded, match="'worker' crashed past"),
        ) as group:
            async with open_supervisor(
                children=[ChildSpec("worker", script.crash_after, (1,))],
                intensity=3,
                period=10,
                shutdown_s=5,
            ):
                await trio.sleep_forever()
        assert trio.current_time() == 4
    # Three restarts allowed within 10 s; the fourth crash escalates.
    assert script.starts == [0, 1, 2, 3]
    escalation = group.value.exceptions[0]
    assert isinstance(escalation.__cause__, Boom)
    assert str(escalation.__cause__) == "crash 4"


async def test_restarts_outside_the_period_do_not_count(autojump_clock: object) -> None:
    script = Script()
    with trio.fail_after(CEILING_S):
        async with open_supervisor(intensity=1, period=5, shutdown_s=5) as sup:
            handle = await sup.add_child(ChildSpec("slow", script.crash_after, (6,)))
            await trio.sleep(31)
            assert handle.running
            assert handle.restarts == 5
            await sup.terminate_child("slow")
    assert script.starts == [0, 6, 12, 18, 24, 30]
    assert handle.exit_reason is ExitReason.TERMINATED


async def test_permanent_restarts_a_normal_exit_and_counts_it(autojump_clock: object) -> None:
    script = Script()
    with trio.fail_after(CEILING_S):
        with pytest.RaisesGroup(RestartIntensityExceeded):
            async with open_supervisor(
                children=[ChildSpec("p", script.return_after, (2,), Restart.PERMANENT)],
                intensity=2,
                period=10,
                shutdown_s=5,
            ):
                await trio.sleep_forever()
        assert trio.current_time() == 6
    assert script.starts == [0, 2, 4]


async def test_transient_ends_on_a_normal_exit_and_is_restarted_after_a_crash(
    autojump_clock: object,
) -> None:
    clean, crashing = Script(), Script()
    exits: list[tuple[str, ExitReason | None, float]] = []

    def record(handle: ChildHandle) -> None:
        exits.append((str(handle.id), handle.exit_reason, trio.current_time()))

    with trio.fail_after(CEILING_S):
        async with open_supervisor(intensity=5, period=100, shutdown_s=5) as sup:
            done = await sup.add_child(
                ChildSpec("clean", clean.return_after, (3,), Restart.TRANSIENT, on_exit=record)
            )
            crashy = await sup.add_child(
                ChildSpec("crashy", crashing.crash_after, (1,), Restart.TRANSIENT)
            )
            assert await done.wait() is ExitReason.NORMAL
            assert trio.current_time() == 3
            assert "clean" not in sup
            assert crashy.running
            assert crashy.restarts == 3
            await sup.terminate_child("crashy")
    assert clean.starts == [0]
    assert exits == [("clean", ExitReason.NORMAL, 3)]
    assert crashing.starts == [0, 1, 2, 3]


async def test_temporary_is_never_restarted(autojump_clock: object) -> None:
    script = Script()
    with trio.fail_after(CEILING_S):
        async with open_supervisor(intensity=5, period=10, shutdown_s=5) as sup:
            handle = await sup.add_child(
                ChildSpec("t", script.crash_after, (2,), Restart.TEMPORARY)
            )
            assert await handle.wait() is ExitReason.CRASHED
            assert trio.current_time() == 2
            assert isinstance(handle.exception, Boom)
            assert sup.get("t") is None
            assert len(sup) == 0
    assert script.starts == [0]


async def test_a_crash_is_logged_with_the_child_id(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script()
    with trio.fail_after(CEILING_S):
        async with open_supervisor(intensity=5, period=10, name="pool", shutdown_s=5) as sup:
            handle = await sup.add_child(
                ChildSpec(("session", 42), script.crash_after, (1,), Restart.TEMPORARY)
            )
            await handle.wait()
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "pool: child ('session', 42) crashed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], Boom)


async def test_graceful_then_forced_shutdown(autojump_clock: object) -> None:
    polite, stubborn, deaf = Script(), Script(), Script()

    async def ignore_stop() -> None:
        # Asked to stop, it takes longer than its grace.
        stubborn.starts.append(trio.current_time())
        await stubborn.stop_requested.wait()
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            stubborn.ends.append((trio.current_time(), "cancelled"))
            raise

    with trio.fail_after(CEILING_S):
        async with open_supervisor(shutdown_s=5, intensity=3, period=5) as sup:
            await sup.add_child(ChildSpec("polite", polite.until_stopped, stop=polite.stop))
            await sup.add_child(ChildSpec("stubborn", ignore_stop, stop=stubborn.stop))
            await sup.add_child(ChildSpec("deaf", deaf.forever))
            await trio.sleep(10)
        # The body ended at 10: the polite child stops at once, the one without a stop
        # callback is cancelled at once, the stubborn one when its 5 s grace is over.
        assert trio.current_time() == 15
    assert polite.ends == [(10, "stopped")]
    assert deaf.ends == [(10, "cancelled")]
    assert stubborn.ends == [(15, "cancelled")]


async def test_terminate_child_grace_is_shielded_from_the_caller(
    autojump_clock: object,
) -> None:
    script = Script()

    async def slow_to_stop() -> None:
        await script.stop_requested.wait()
        await trio.sleep(2)  # cleanup within its 3 s grace
        script.ends.append((trio.current_time(), "clean exit"))

    with trio.fail_after(CEILING_S):
        async with open_supervisor(shutdown_s=3, intensity=3, period=5) as sup:
            handle = await sup.add_child(ChildSpec("c", slow_to_stop, stop=script.stop))
            with trio.move_on_after(0.5) as caller:
                await sup.terminate_child("c")
            # The caller's cancellation waited for the child instead of abandoning it.
            assert caller.cancelled_caught
            assert trio.current_time() == 2
            assert handle.exit_reason is ExitReason.TERMINATED
    assert script.ends == [(2, "clean exit")]


async def test_dynamic_children_lookup_and_errors(autojump_clock: object) -> None:
    scripts: dict[str, Script] = {"a": Script(), "b": Script()}

    async def child(name: str) -> None:
        await scripts[name].forever()

    with trio.fail_after(CEILING_S):
        async with open_supervisor(
            template=ChildTemplate(child), intensity=3, period=5, shutdown_s=5
        ) as sup:
            a = await sup.start_child("a", "a")
            b = await sup.start_child("b", "b")
            assert sup.get("a") is a
            assert "b" in sup
            assert len(sup) == 2
            with pytest.raises(ChildAlreadyStarted):
                await sup.start_child("a", "a")
            await sup.terminate_child("a")
            assert a.exit_reason is ExitReason.TERMINATED
            assert sup.get("a") is None
            with pytest.raises(ChildNotFound):
                await sup.terminate_child("a")
            assert b.running
            assert repr(b) == "<ChildHandle 'b' running, 0 restarts>"
        with pytest.raises(SupervisorClosed):
            await sup.start_child("c", "a")
        async with open_supervisor(intensity=3, period=5, shutdown_s=5) as plain:
            with pytest.raises(RuntimeError, match="no child template"):
                await plain.start_child("x")


async def test_isolated_children_are_given_up_alone(autojump_clock: object) -> None:
    crashing, steady = Script(), Script()
    exits: list[tuple[object, ExitReason | None, float]] = []

    async def child(kind: str) -> None:
        if kind == "crash":
            await crashing.crash_after(1)
        else:
            await steady.forever()

    def record(handle: ChildHandle) -> None:
        exits.append((handle.id, handle.exit_reason, trio.current_time()))

    with trio.fail_after(CEILING_S):
        async with open_supervisor(
            template=ChildTemplate(child, restart=Restart.TRANSIENT),
            intensity=2,
            period=10,
            isolate_children=True,
            shutdown_s=5,
        ) as sup:
            await sup.start_child("steady", "steady")
            bad = await sup.start_child("bad", "crash", on_exit=record)
            assert await bad.wait() is ExitReason.CRASHED
            assert trio.current_time() == 3
            assert sup.get("steady") is not None
            assert steady.ends == []
    assert crashing.starts == [0, 1, 2]
    assert exits == [("bad", ExitReason.CRASHED, 3)]
    assert steady.ends == [(3, "cancelled")]


async def test_escalation_cancels_the_siblings(autojump_clock: object) -> None:
    crashing, sibling = Script(), Script()
    with trio.fail_after(CEILING_S):
        with pytest.RaisesGroup(RestartIntensityExceeded):
            async with open_supervisor(
                children=[
                    ChildSpec("sibling", sibling.forever),
                    ChildSpec("crashing", crashing.crash_after, (1,)),
                ],
                intensity=0,
                period=1,
                shutdown_s=5,
            ):
                await trio.sleep_forever()
    assert crashing.starts == [0]
    assert sibling.ends == [(1, "cancelled")]


async def test_fixed_children_start_in_order_and_stop_in_reverse(
    autojump_clock: object,
) -> None:
    order: list[str] = []
    stopped = {name: trio.Event() for name in ("one", "two", "three")}

    def spec(name: str) -> ChildSpec:
        async def run() -> None:
            order.append(f"start {name}")
            await stopped[name].wait()

        def stop() -> None:
            order.append(f"stop {name}")
            stopped[name].set()

        return ChildSpec(name, run, stop=stop)

    with trio.fail_after(CEILING_S):
        async with open_supervisor(
            children=[spec("one"), spec("two"), spec("three")], intensity=3, period=5, shutdown_s=5
        ):
            assert order == ["start one", "start two", "start three"]
    assert order[3:] == ["stop three", "stop two", "stop one"]
