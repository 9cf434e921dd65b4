"""Supervising the worker processes of a run: start, restart by one rule, stop in order, on signals too.

Stop signals. Ctrl-C (SIGINT) and SIGTERM mean the same, whether they reach the parent alone or the whole
process group: the parent stops the workers in order (cameras first, then the queues drain into SQL) and a
second one aborts the drain. Workers never act on these signals themselves: they start with SIGINT and
SIGTERM blocked (:func:`held_signals` around every start) and then ignore them (:func:`child_main`), so a
signal to the group cannot kill a worker half-way, and the embedded broker keeps its streams until drained.
A worker does die with its parent (Linux), so a parent killed outright leaves no orphan behind.
Once a stop signal came, no worker is restarted.

Restart rule (:meth:`Supervisor.should_restart`): a restartable role is restarted, at most ``max_restarts``
times per run, when it was killed by a signal (SIGKILL, the out-of-memory killer, a crash) or gave up on a
database or queue connection (exit code :data:`EXIT_RETRYABLE`): the queues kept what it had not
acknowledged, so the new one finishes it. Any other failure (an exception: a bug or bad input) is final and
reported to the caller, who fails the run fast and loudly.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.process import BaseProcess
from typing import Any

import redis.exceptions
import sqlalchemy.exc

from common.redact import redact_text
from pipeline.transport.queues import QueueError
from storage.db import StoreError

__all__ = [
    "EXIT_RETRYABLE",
    "MAX_RESTARTS",
    "RETRYABLE_ERRORS",
    "STOP_SIGNALS",
    "Supervisor",
    "child_main",
    "describe",
    "held_signals",
]

log = logging.getLogger(__name__)

MAX_RESTARTS = 5  # per worker role and run: a worker that keeps dying is a bug to see, not to hide
EXIT_RETRYABLE = 75  # sysexits EX_TEMPFAIL: the worker gave up on a connection; starting it again may work
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
# Failures of a database or queue connection (server restarting, network cut, SQLite busy past its timeout):
# the only ones worth trying again. Everything else is a bug or bad input and fails at once.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    StoreError,
    QueueError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread for the block. A process started inside inherits the blocked
    mask, so it is immune to them from its first instruction; one that arrives meanwhile is delivered to
    this process when the block ends, never lost."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def child_main(target: Callable[..., None], /, *args: Any, **kwargs: Any) -> None:
    """The process target of every supervised worker: runs ``target(*args, **kwargs)``.

    SIGINT and SIGTERM are ignored (the parent tells the worker to stop, in order). A failure in
    :data:`RETRYABLE_ERRORS` is logged on one line and exits with :data:`EXIT_RETRYABLE`, so the supervisor
    may restart the worker; any other exception propagates (traceback, exit code 1) and is final.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _die_with_parent()
    try:
        target(*args, **kwargs)
    except RETRYABLE_ERRORS as exc:
        log.error("giving up on a connection: %s", describe(exc))
        sys.exit(EXIT_RETRYABLE)


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its parent dies (PR_SET_PDEATHSIG). It ignores the stop signals, so
    without this a parent killed outright (SIGKILL, out of memory) would leave it serving forever."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = multiprocessing.parent_process()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent.pid:  # the parent died before prctl took effect
        os._exit(1)


def describe(exc: BaseException) -> str:
    """``"Type: first line of the message"``, URLs' secrets masked: fit for one log line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {redact_text(text.splitlines()[0] if text else '')}"


class Supervisor:
    """The worker processes of one run, by role.

    ``factories[role]()`` makes the role's (unstarted) process, also for a restart; ``restartable`` are the
    roles :meth:`should_restart` may restart. ``on_stop(signal_name, n)`` runs in the waiting thread (not in
    the signal handler) for the ``n``-th stop signal received while :meth:`stop_signals` is active.
    """

    def __init__(
        self,
        factories: Mapping[str, Callable[[], BaseProcess]],
        *,
        restartable: frozenset[str] | set[str],
        on_stop: Callable[[str, int], None],
        max_restarts: int = MAX_RESTARTS,
    ) -> None:
        self.factories = dict(factories)
        self.restartable = frozenset(restartable)
        self.on_stop = on_stop
        self.max_restarts = max_restarts
        self.procs: dict[str, BaseProcess] = {}
        self.restarts = dict.fromkeys(self.factories, 0)
        self.failed: dict[str, int] = {}  # role -> exit code, for the roles that failed for good
        self.shutting_down = False
        self._signals: list[int] = []  # received, not yet handed to on_stop
        self._stops = 0

    # -- signals

    @contextlib.contextmanager
    def stop_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM handled for the block: each marks the run as shutting down at once (no restart
        from then on) and is passed to ``on_stop`` by the waiting loop; the old handlers come back after."""
        old = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in old.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Only plain assignments here: the handler may interrupt this thread inside a lock it would need.
        self.shutting_down = True
        self._signals.append(signum)

    def _deliver_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            self._stops += 1
            self.on_stop(signal.Signals(signum).name, self._stops)

    # -- processes

    def start(self) -> None:
        """Start every role."""
        for name in self.factories:
            self._start(name)

    def _start(self, name: str) -> None:
        proc = self.factories[name]()
        with held_signals():
            proc.start()
        self.procs[name] = proc

    def should_restart(self, name: str) -> bool:
        """True when role ``name`` has exited and the restart rule (module docstring) says start it again."""
        code = self.procs[name].exitcode
        return (
            code is not None
            and (code < 0 or code == EXIT_RETRYABLE)
            and name in self.restartable
            and not self.shutting_down
            and self.restarts[name] < self.max_restarts
        )

    def poll(self) -> list[str]:
        """Hand pending stop signals to ``on_stop``; restart the roles the rule allows; return the roles that
        have just failed for good (each once; also recorded in :attr:`failed`)."""
        self._deliver_signals()
        failed_now = []
        for name, proc in list(self.procs.items()):
            if proc.is_alive() or proc.exitcode == 0 or name in self.failed:
                continue
            if self.should_restart(name):
                self.restarts[name] += 1
                log.warning(
                    "the %s worker died (exit code %s); restarting it (%d/%d)",
                    name,
                    proc.exitcode,
                    self.restarts[name],
                    self.max_restarts,
                )
                self._start(name)
            else:
                self.failed[name] = proc.exitcode
                failed_now.append(name)
        return failed_now

    def wait(
        self,
        name: str,
        *,
        on_failure: Callable[[str, int], None],
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Supervise until role ``name`` has exited for good (succeeded, or failed and not restarted).

        Every half second: :meth:`poll`, then ``on_failure(role, exit_code)`` for each role that just failed
        for good (any role, not only ``name``), then ``tick()``.
        """
        while True:
            for failed in self.poll():
                on_failure(failed, self.failed[failed])
            if tick is not None:
                tick()
            proc = self.procs[name]
            if not proc.is_alive() and not self.should_restart(name):
                return
            proc.join(timeout=0.5)

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """The end of a run, also an aborted one: no more restarts; wait up to ``timeout_s`` for each process
        still alive (the caller has told it to stop), then SIGKILL it (stop signals are ignored there)."""
        self.shutting_down = True
        for proc in self.procs.values():
            proc.join(timeout=timeout_s)
            if proc.is_alive():
                log.warning("the %s worker did not stop within %g s; killing it", proc.name, timeout_s)
                proc.kill()
                proc.join(timeout=10)
