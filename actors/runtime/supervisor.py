"""OTP-style supervision on trio.

Theory of operation. A supervisor owns one nursery. Each child runs inside a *runner*
task of that nursery, started with ``nursery.start`` so :meth:`Supervisor.start_child`
returns the child's :class:`ChildHandle` once the child is running. The runner calls the
child function, and when it returns or raises decides, by the child's :class:`Restart`
type, whether to call it again:

============  =========================  ===========================
restart       returns (normal exit)      raises (crash)
============  =========================  ===========================
PERMANENT     restarted                  restarted
TRANSIENT     ends                       restarted
TEMPORARY     ends                       ends
============  =========================  ===========================

A child stopped by :meth:`Supervisor.terminate_child` or :meth:`Supervisor.shutdown` is
never restarted: a cancellation we asked for is a normal exit (``ExitReason.TERMINATED``).

Restart intensity. At most ``intensity`` restarts may happen within any ``period``
seconds. One more and the supervisor gives up: it raises
:class:`RestartIntensityExceeded` out of :func:`open_supervisor` (the nursery cancels
every other child), so the failure escalates to the owner instead of looping. With
``isolate_children=True`` (many independent children of one kind, such as chat
sessions) the budget is counted per child, and a child past it is given up alone
(logged, ``ExitReason.CRASHED``) while its siblings run on.

Stopping. Stopping a child first calls its ``stop`` callback (if it has one: the child's
own way of being asked to finish, such as closing its mailbox), then waits up to its
``shutdown_s`` grace, shielded from the caller's cancellation, then cancels it. A child
without a ``stop`` callback cannot be asked, so it is cancelled at once.

Exceptions::

    SupervisorError
    ├── RestartIntensityExceeded   escalation: too many restarts within the period
    ├── ChildAlreadyStarted        start_child with an id that is running
    ├── ChildNotFound              terminate_child with an unknown id (also a LookupError)
    └── SupervisorClosed           start_child after shutdown began
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

logger = logging.getLogger(__name__)

ChildFn = Callable[..., Awaitable[object]]


class Restart(enum.Enum):
    """When a child that ended is started again (module docstring, table)."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class ExitReason(enum.Enum):
    """Why a child ended for good (it will not be restarted)."""

    NORMAL = "normal"  # returned, and its restart type does not restart a normal exit
    TERMINATED = "terminated"  # stopped by terminate_child / shutdown, or the supervisor died
    CRASHED = "crashed"  # raised, and was not restarted (TEMPORARY, or past its budget)


class SupervisorError(Exception):
    """Base of the supervisor's errors."""


class RestartIntensityExceeded(SupervisorError):
    """More than ``intensity`` restarts within ``period`` seconds; ``__cause__`` is the
    last crash."""

    def __init__(self, child_id: Hashable, intensity: int, period: float) -> None:
        super().__init__(
            f"child {child_id!r} crashed past the restart intensity "
            f"({intensity} restarts within {period} s): giving up"
        )
        self.child_id = child_id


class ChildAlreadyStarted(SupervisorError):
    """A child with this id is already running."""


class ChildNotFound(SupervisorError, LookupError):
    """No running child has this id."""


class SupervisorClosed(SupervisorError):
    """The supervisor is shutting down and starts no more children."""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to run one child: ``await fn(*args)``.

    ``stop`` is called (synchronously) to ask the child to finish on its own before its
    ``shutdown_s`` grace runs out (``None``: the supervisor's grace). ``on_exit`` is called
    (synchronously, from the runner) with the handle once the child has ended for good.
    """

    id: Hashable
    fn: ChildFn
    args: tuple[Any, ...] = ()
    restart: Restart = Restart.PERMANENT
    shutdown_s: float | None = None
    stop: Callable[[], object] | None = None
    on_exit: Callable[[ChildHandle], object] | None = None


@dataclass(frozen=True, slots=True)
class ChildTemplate:
    """The one kind of dynamic child of a ``simple_one_for_one`` supervisor: each
    :meth:`Supervisor.start_child` runs ``fn`` with its own id and arguments."""

    fn: ChildFn
    restart: Restart = Restart.TRANSIENT
    shutdown_s: float | None = None


class ChildHandle:
    """A running (or ended) child, as :meth:`Supervisor.start_child` returns it."""

    __slots__ = (
        "_restart_times",
        "_scope",
        "_stopping",
        "exception",
        "exit_reason",
        "finished",
        "restarts",
        "spec",
    )

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        #: times the child was started again after it ended
        self.restarts = 0
        #: set once the child ended for good
        self.exit_reason: ExitReason | None = None
        #: the last crash, if any
        self.exception: BaseException | None = None
        self.finished = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._stopping = False
        self._restart_times: deque[float] = deque()

    @property
    def id(self) -> Hashable:
        return self.spec.id

    @property
    def running(self) -> bool:
        return not self.finished.is_set()

    async def wait(self) -> ExitReason:
        """Wait until the child has ended for good and return why.

        A checkpoint; cancelling it leaves the child alone.
        """
        await self.finished.wait()
        assert self.exit_reason is not None
        return self.exit_reason

    def __repr__(self) -> str:
        state = "running" if self.running else f"ended ({self.exit_reason})"
        return f"<ChildHandle {self.id!r} {state}, {self.restarts} restarts>"


class Supervisor:
    """Supervises children in one nursery; build it with :func:`open_supervisor`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        template: ChildTemplate | None,
        intensity: int,
        period: float,
        shutdown_s: float,
        isolate_children: bool,
        name: str,
    ) -> None:
        if intensity < 0 or period <= 0 or shutdown_s < 0:
            raise ValueError("intensity >= 0, period > 0 and shutdown_s >= 0 are required")
        self.name = name
        self._nursery = nursery
        self._template = template
        self._intensity = intensity
        self._period = period
        self._shutdown_s = shutdown_s
        self._isolate = isolate_children
        self._children: dict[Hashable, ChildHandle] = {}
        self._restart_times: deque[float] = deque()
        self._closing = False

    # -- lookup -------------------------------------------------------------------------

    def get(self, child_id: Hashable) -> ChildHandle | None:
        """The running child with this id, or ``None``. Not a checkpoint."""
        return self._children.get(child_id)

    def __contains__(self, child_id: Hashable) -> bool:
        return child_id in self._children

    def __len__(self) -> int:
        return len(self._children)

    # -- starting -----------------------------------------------------------------------

    async def start_child(
        self,
        child_id: Hashable,
        *args: Any,
        stop: Callable[[], object] | None = None,
        on_exit: Callable[[ChildHandle], object] | None = None,
    ) -> ChildHandle:
        """Start a dynamic child (``simple_one_for_one``): ``template.fn(*args)``.

        A checkpoint; returns once the child runs. The id is taken before the checkpoint,
        so a concurrent start with the same id fails. Raises :class:`ChildAlreadyStarted`,
        :class:`SupervisorClosed`, or :class:`RuntimeError` without a template. If cancelled
        before the child started, the child is not started.
        """
        if self._template is None:
            raise RuntimeError(f"{self.name} has no child template: use add_child")
        spec = ChildSpec(
            id=child_id,
            fn=self._template.fn,
            args=args,
            restart=self._template.restart,
            shutdown_s=self._template.shutdown_s,
            stop=stop,
            on_exit=on_exit,
        )
        return await self.add_child(spec)

    async def add_child(self, spec: ChildSpec) -> ChildHandle:
        """Start a child from a full spec (a fixed child of a ``one_for_one`` supervisor).

        Same behaviour and errors as :meth:`start_child`.
        """
        if self._closing:
            raise SupervisorClosed(f"{self.name} is shutting down")
        if spec.id in self._children:
            raise ChildAlreadyStarted(f"{self.name}: child {spec.id!r} is already running")
        handle = ChildHandle(spec)
        self._children[spec.id] = handle
        try:
            await self._nursery.start(self._run_child, handle)
        except BaseException:
            if self._children.get(spec.id) is handle:
                del self._children[spec.id]
            raise
        return handle

    # -- stopping -----------------------------------------------------------------------

    async def terminate_child(self, child_id: Hashable) -> None:
        """Stop one child: its ``stop`` callback, then its grace, then cancellation.

        A checkpoint that returns once the child has ended. The grace is shielded: if the
        caller is cancelled, the child is still stopped (the caller's cancellation is
        delivered at the end). Raises :class:`ChildNotFound`.
        """
        handle = self._children.get(child_id)
        if handle is None:
            raise ChildNotFound(f"{self.name}: no child {child_id!r}")
        await self._stop([handle])
        await trio.lowlevel.checkpoint()

    async def shutdown(self) -> None:
        """Stop every child (stop callbacks in reverse start order, graces, then cancel)
        and start no more. Idempotent.

        A checkpoint, shielded like :meth:`terminate_child`; returns once every child has
        ended.
        """
        await self._shutdown()
        await trio.lowlevel.checkpoint()

    async def _shutdown(self) -> None:
        self._closing = True
        await self._stop(list(reversed(self._children.values())))

    async def _stop(self, handles: Sequence[ChildHandle]) -> None:
        now = trio.current_time()
        deadlines: list[tuple[float, int, ChildHandle]] = []
        for index, handle in enumerate(handles):
            if handle.finished.is_set() or handle._stopping:
                continue
            handle._stopping = True
            grace = self._shutdown_s if handle.spec.shutdown_s is None else handle.spec.shutdown_s
            if handle.spec.stop is None or grace <= 0:
                self._cancel(handle)
                continue
            try:
                handle.spec.stop()
            except Exception:
                logger.exception("%s: stop callback of %r failed", self.name, handle.id)
                self._cancel(handle)
                continue
            deadlines.append((now + grace, index, handle))
        deadlines.sort(key=lambda item: (item[0], item[1]))
        with trio.CancelScope(shield=True):
            for deadline, _, handle in deadlines:
                with trio.move_on_at(deadline):
                    await handle.finished.wait()
                if not handle.finished.is_set():
                    logger.warning(
                        "%s: child %r did not stop within its grace: cancelling",
                        self.name,
                        handle.id,
                    )
                    self._cancel(handle)
            for handle in handles:
                await handle.finished.wait()

    @staticmethod
    def _cancel(handle: ChildHandle) -> None:
        if handle._scope is not None:
            handle._scope.cancel()

    # -- the runner ---------------------------------------------------------------------

    async def _run_child(
        self, handle: ChildHandle, *, task_status: trio.TaskStatus[ChildHandle]
    ) -> None:
        spec = handle.spec
        started = False
        reason = ExitReason.TERMINATED
        try:
            while True:
                crash: Exception | None = None
                scope = trio.CancelScope()
                handle._scope = scope
                if handle._stopping:
                    scope.cancel()
                with scope:
                    if not started:
                        started = True
                        task_status.started(handle)
                    try:
                        await spec.fn(*spec.args)
                    except Exception as exc:
                        crash = exc
                handle._scope = None
                if crash is not None:
                    handle.exception = crash
                    logger.error("%s: child %r crashed", self.name, spec.id, exc_info=crash)
                if handle._stopping:
                    reason = ExitReason.CRASHED if crash is not None else ExitReason.TERMINATED
                    return
                if crash is None and spec.restart is not Restart.PERMANENT:
                    reason = ExitReason.NORMAL
                    return
                if crash is not None and spec.restart is Restart.TEMPORARY:
                    reason = ExitReason.CRASHED
                    return
                if not self._may_restart(handle, crash):
                    reason = ExitReason.CRASHED
                    return
                handle.restarts += 1
                # A child that ends without ever blocking must not starve its siblings
                # while it is restarted.
                await trio.lowlevel.checkpoint()
        finally:
            handle.exit_reason = reason
            if self._children.get(spec.id) is handle:
                del self._children[spec.id]
            handle.finished.set()
            if spec.on_exit is not None:
                try:
                    spec.on_exit(handle)
                except Exception:
                    logger.exception("%s: on_exit of %r failed", self.name, spec.id)

    def _may_restart(self, handle: ChildHandle, crash: Exception | None) -> bool:
        """Count one restart against the budget; past it, escalate or give the child up."""
        now = trio.current_time()
        times = handle._restart_times if self._isolate else self._restart_times
        while times and times[0] <= now - self._period:
            times.popleft()
        if len(times) >= self._intensity:
            if self._isolate:
                logger.error(
                    "%s: child %r restarted %d times within %s s: giving it up",
                    self.name,
                    handle.id,
                    len(times),
                    self._period,
                )
                return False
            raise RestartIntensityExceeded(handle.id, self._intensity, self._period) from crash
        times.append(now)
        return True


@asynccontextmanager
async def open_supervisor(
    *,
    children: Sequence[ChildSpec] = (),
    template: ChildTemplate | None = None,
    intensity: int,
    period: float,
    shutdown_s: float,
    isolate_children: bool = False,
    name: str = "supervisor",
) -> AsyncIterator[Supervisor]:
    """Open a supervisor; fixed ``children`` are started in order before the body runs.

    ``template`` makes it ``simple_one_for_one``: :meth:`Supervisor.start_child` starts
    dynamic children of that kind. ``intensity`` restarts are allowed within ``period``
    seconds (per child with ``isolate_children``). ``shutdown_s`` is the default grace.

    When the body ends (normally, by an exception or by cancellation) every child is
    stopped with :meth:`Supervisor.shutdown`. Escalation raises
    :class:`RestartIntensityExceeded`, inside the :class:`ExceptionGroup` the nursery
    raises; the body is cancelled and the other children with it.
    """
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(
            nursery,
            template=template,
            intensity=intensity,
            period=period,
            shutdown_s=shutdown_s,
            isolate_children=isolate_children,
            name=name,
        )
        try:
            for spec in children:
                await supervisor.add_child(spec)
            yield supervisor
        finally:
            # Without the trailing checkpoint: a pending cancellation must not replace
            # the exception the body may be raising.
            await supervisor._shutdown()
