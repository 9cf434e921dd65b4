"""The supervisor's contract on real processes: the restart rule, stop signals, the workers' exit codes."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time

import pytest
import sqlalchemy.exc

from pipeline.runtime.supervise import EXIT_RETRYABLE, Supervisor, child_main, held_signals
from pipeline.transport.queues import QueueError
from storage.db import StoreError

CTX = mp.get_context("fork")  # the rule does not depend on how processes start; fork is fast


def raise_(exc: BaseException) -> None:
    raise exc


def sleep_then_return(seconds: float) -> None:
    time.sleep(seconds)


def die(how: str) -> None:
    if how == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "retryable":
        raise StoreError("cannot reach the store")
    elif how == "bug":
        raise TypeError("a bug")
    elif how == "ok":
        return
    time.sleep(60)


def quiet(target, *args) -> None:
    """child_main with the child's stderr silenced (expected tracebacks are not test output)."""
    sys.stderr = open(os.devnull, "w")
    child_main(target, *args)


@pytest.mark.parametrize(
    "exc, code",
    [
        (None, 0),
        (StoreError("store down"), EXIT_RETRYABLE),
        (QueueError("redis unreachable"), EXIT_RETRYABLE),
        (
            sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
            EXIT_RETRYABLE,
        ),
        (RuntimeError("a bug"), 1),
        (ValueError("bad input"), 1),
    ],
)
def test_child_main_exit_codes(exc, code):
    p = CTX.Process(target=quiet, args=(raise_, exc) if exc is not None else (sleep_then_return, 0))
    p.start()
    p.join(30)
    assert p.exitcode == code


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_workers_ignore_stop_signals_from_their_first_instruction(signum):
    guarded = CTX.Process(target=child_main, args=(sleep_then_return, 1.5))
    plain = CTX.Process(target=sleep_then_return, args=(1.5,))
    with held_signals():
        guarded.start()
    plain.start()
    for p in (guarded, plain):
        os.kill(p.pid, signum)
    time.sleep(0.3)
    os.kill(guarded.pid, signum)  # after child_main set its handlers too
    for p in (guarded, plain):
        p.join(30)
    assert guarded.exitcode == 0
    if signum == signal.SIGTERM:  # (pytest's forked SIGINT handler differs) the same signal ends an
        assert plain.exitcode == -signum  # unguarded process: the guard is what saved the other one


@pytest.mark.parametrize(
    "how, shutting_down, restarts, failed",
    [
        ("killed", False, 2, -signal.SIGKILL),  # SIGKILL / out of memory: restarted up to the limit
        ("retryable", False, 2, EXIT_RETRYABLE),  # gave up on a connection: restarted up to the limit
        ("bug", False, 0, 1),  # an exception: final at once
        ("ok", False, 0, None),  # done: nothing to restart, nothing failed
        ("killed", True, 0, -signal.SIGKILL),  # during shutdown nothing is restarted
    ],
)
def test_restart_rule(how, shutting_down, restarts, failed):
    seen: list[tuple[str, int]] = []
    sup = Supervisor(
        {"worker": lambda: CTX.Process(target=quiet, args=(die, how), name="worker")},
        restartable={"worker"},
        on_stop=lambda *_: None,
        max_restarts=2,
    )
    sup.shutting_down = shutting_down
    sup.start()
    sup.wait("worker", on_failure=lambda name, code: seen.append((name, code)))
    assert sup.restarts["worker"] == restarts
    assert seen == ([] if failed is None else [("worker", failed)])
    assert sup.failed == ({} if failed is None else {"worker": failed})


def test_a_role_outside_restartable_is_never_restarted():
    sup = Supervisor(
        {"cameras": lambda: CTX.Process(target=quiet, args=(die, "killed"))},
        restartable=set(),
        on_stop=lambda *_: None,
    )
    sup.start()
    sup.wait("cameras", on_failure=lambda *_: None)
    assert sup.restarts["cameras"] == 0 and sup.failed == {"cameras": -signal.SIGKILL}


def test_stop_signals_reach_on_stop_in_order_and_end_restarts():
    stops: list[tuple[str, int]] = []
    sup = Supervisor(
        {"worker": lambda: CTX.Process(target=quiet, args=(sleep_then_return, 1.0))},
        restartable={"worker"},
        on_stop=lambda name, n: stops.append((name, n)),
    )
    before = signal.getsignal(signal.SIGTERM)
    with sup.stop_signals():
        sup.start()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        sup.wait("worker", on_failure=lambda *_: None)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    assert stops == [("SIGTERM", 1), ("SIGINT", 2)]
    assert sup.shutting_down and not sup.should_restart("worker")


def start_worker_and_wait(pid_out) -> None:
    """A stand-in parent: starts a supervised worker, reports its pid, then waits to be killed."""
    child = CTX.Process(target=child_main, args=(sleep_then_return, 60.0))
    with held_signals():
        child.start()
    pid_out.put(child.pid)
    time.sleep(60)


def test_a_worker_dies_with_its_parent():
    psutil = pytest.importorskip("psutil")
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    pids = CTX.Queue()
    parent = CTX.Process(target=start_worker_and_wait, args=(pids,))
    parent.start()
    worker = psutil.Process(pids.get(timeout=30))
    time.sleep(0.3)  # the worker has set itself up
    os.kill(parent.pid, signal.SIGKILL)  # the parent killed outright: no ordered stop
    parent.join(10)
    worker.wait(timeout=10)  # raises psutil.TimeoutExpired when the worker outlives its parent
