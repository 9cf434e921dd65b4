"""Camera health in SQL: each source's state copied into ``cameras`` every few seconds, outages as events."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from pipeline.runtime.supervise import RETRYABLE_ERRORS, describe

log = logging.getLogger(__name__)

HEALTH_EVERY_S = 2.0


class HealthReporter(threading.Thread):
    """Every ``every_s`` seconds, copy each source's health (``group.health()``) into ``cameras``, and record
    every connect/disconnect as a ``camera_health_events`` row; a final report on :meth:`stop`.

    The store being unreachable (:data:`~pipeline.runtime.supervise.RETRYABLE_ERRORS`) costs a report, with a
    warning, never the cameras' run. Any other failure is a bug: the reporter stops the group at once (fail
    fast) and :meth:`stop` re-raises it (fail loudly).
    """

    def __init__(self, store, group, every_s: float = HEALTH_EVERY_S):
        super().__init__(name="health", daemon=True)
        self.store, self.group, self.every_s = store, group, every_s
        self._halt = threading.Event()
        self._connected: dict[str, bool] = {}
        self._failure: BaseException | None = None

    def stop(self) -> None:
        """Stop reporting, store the final state; raise what made the reporter fail, if anything did."""
        self._halt.set()
        self.join(timeout=10)
        if self._failure is not None:
            raise self._failure
        self._report_or_warn("final camera health not stored")

    def run(self) -> None:
        try:
            while not self._halt.wait(self.every_s):
                self._report_or_warn("camera health not stored")
        except BaseException as exc:
            self._failure = exc
            self.group.stop()

    def _report_or_warn(self, what: str) -> None:
        try:
            self.report()
        except RETRYABLE_ERRORS as exc:
            log.warning("%s: %s", what, describe(exc))

    def report(self) -> None:
        """Store every camera's health now (one transaction)."""
        from storage import repository as repo

        now = datetime.now(UTC)
        with self.store.session() as s:
            for cid, h in self.group.health().items():
                last = datetime.fromtimestamp(h.last_frame_time, UTC) if h.last_frame_time else None
                repo.update_camera_health(
                    s,
                    cid,
                    connected=h.connected,
                    reconnects=h.reconnects,
                    last_frame_time=last,
                    frames=h.frames,
                    fps=h.fps,
                    last_error=h.last_error,
                    now=now,
                )
                before = self._connected.get(cid)
                if before is not None and before != h.connected:
                    event = "reconnected" if h.connected else "disconnected"
                    repo.add_health_event(s, cid, event=event, time=now, detail=h.last_error)
                if h.connected or before is not None:  # still connecting at start is no outage yet
                    self._connected[cid] = h.connected
            s.commit()
