"""The one redactor (common.redact), and the proof that a live source and a Redis queue never leak their URL's
secrets into log records, health, ``repr`` or exception text."""

from __future__ import annotations

import logging
import time
import traceback

import pytest

from common.redact import redact_text, redact_url, url_secrets
from pipeline.camera.sources import LiveStreamSource, SourceError, open_source
from pipeline.config import LiveConfig
from pipeline.transport.queues import QueueError, open_queue
from tests.queue_defaults import QUEUE

SECRETS = ("s3cret", "t0ken")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", ""),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("data/vtest/vtest.avi", "data/vtest/vtest.avi"),
        ("redis://:secretpw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://alice:secretpw@redis.local:6380/2", "redis://alice:***@redis.local:6380/2"),
        # a user-info without ':' is read as a password by some clients: hidden whole
        ("redis://alice@h/0", "redis://***@h/0"),
        ("redis://password@host", "redis://***@host"),
        ("rediss://alice:s%40cret@h/0", "rediss://alice:***@h/0"),
        ("postgresql+psycopg://u:p%2Fw@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("rtsp://u:p@ss@cam/x", "rtsp://u:***@cam/x"),  # the last '@' ends the user-info
        ("redis://h/0?password=secretpw&socket_timeout=2", "redis://h/0?password=***&socket_timeout=2"),
        ("unix:///run/redis.sock?db=1&password=secretpw", "unix:///run/redis.sock?db=1&password=***"),
        ("rtsp://cam/s?token=t0ken", "rtsp://cam/s?token=***"),
        ("rtsp://cam/s?x=1&Token=t0ken#f", "rtsp://cam/s?x=1&Token=***#f"),
        ("https://h/x?api_key=k1&access_token=k2&n=3", "https://h/x?api_key=***&access_token=***&n=3"),
        (
            "rtsp://user:s3cret@127.0.0.1:1/stream?token=t0ken",
            "rtsp://user:***@127.0.0.1:1/stream?token=***",
        ),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_returns_a_non_string_as_it_is() -> None:
    assert redact_url(None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", []),
        ("redis://127.0.0.1:6379/0", []),
        ("redis://password@host", ["password"]),
        ("redis://:secretpw@h/0", ["secretpw"]),
        ("rediss://alice:s%40cret@h/0", ["s%40cret", "s@cret"]),  # as written and decoded, longest first
        ("rtsp://u:pw@h/s?token=t0ken&x=1", ["t0ken", "pw"]),
        ("redis://h/0?password=secretpw&db=1", ["secretpw"]),
        ("rtsp://h/s?token=", []),  # an empty value is no secret
        ("redis://h/0?password=a%2Bb", ["a%2Bb", "a+b"]),  # query values too, as written and decoded
    ],
)
def test_url_secrets(url: str, expected: list[str]) -> None:
    assert url_secrets(url) == expected


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("", (), ""),
        ("", ("s3cret",), ""),
        ("Error 111 connecting to 127.0.0.1:1", ("s3cret",), "Error 111 connecting to 127.0.0.1:1"),
        ("cannot open rtsp://u:pw@h/s: refused", (), "cannot open rtsp://u:***@h/s: refused"),
        (
            "two: redis://:a@h1/0 and rtsp://h2/x?token=b, done",
            (),
            "two: redis://:***@h1/0 and rtsp://h2/x?token=*** done",
        ),
        ("AUTH s3cret refused", ["s3cret"], "AUTH *** refused"),
        ("abcdef abc", ["abc", "abcdef"], "*** ***"),  # longest first: no tail of a longer secret is left
        ("unchanged", [""], "unchanged"),
        (
            "url redis://:s%40cret@h/0 failed, password s@cret",
            url_secrets("redis://:s%40cret@h/0"),
            "url redis://:***@h/0 failed, password ***",
        ),
    ],
)
def test_redact_text(text: str, secrets: list[str], expected: str) -> None:
    assert redact_text(text, secrets) == expected


# ----------------------------------------------------------------- no secret leaves a live source or a queue


def _exception_text(err: BaseException) -> str:
    """The message and ``repr`` of ``err`` and of every exception chained to it (cause or context, printed or
    not); source lines are left out, since the test's own call sites quote the secrets."""
    parts: list[str] = []
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts += [*traceback.format_exception_only(e), repr(e)]
        e = e.__cause__ or e.__context__
    return "".join(parts)


def _assert_no_secret(texts: list[str]) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into: {text}"


def test_live_source_and_redis_queue_never_log_or_raise_their_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    # A live source on a port where nothing listens: it fails to connect and retries in its reader thread.
    live_url = "rtsp://user:s3cret@127.0.0.1:1/stream?token=t0ken"
    src = open_source("cam-secret", live_url, live=LiveConfig(reconnect_initial_s=0.05, reconnect_max_s=0.2))
    try:
        assert isinstance(src, LiveStreamSource)
        deadline = time.monotonic() + 10
        while src.health.reconnects < 2 and time.monotonic() < deadline:
            assert src.read(timeout=0.1) is None
        health = src.health
    finally:
        src.close()
    assert health.reconnects >= 2 and not health.connected
    texts += [repr(health), str(health.last_error)]

    # An unsupported scheme is an error at once; its message names the source, redacted.
    with pytest.raises(SourceError) as bad_scheme:
        open_source("cam-secret", "ftp://user:s3cret@127.0.0.1:1/x?token=t0ken")
    texts.append(_exception_text(bad_scheme.value))

    # redis-py has no ``token`` option: the queue refuses the URL at construction.
    with pytest.raises(QueueError) as bad_option:
        open_queue("redis://:s3cret@127.0.0.1:1/0?token=t0ken", retry_for_s=0.3, **QUEUE)
    texts.append(_exception_text(bad_option.value))

    # A URL redis-py accepts, on a port where nothing listens: retried (and logged), then a QueueError.
    q = open_queue("redis://:s3cret@127.0.0.1:1/0?password=t0ken", retry_for_s=0.3, **QUEUE)
    texts.append(repr(q))
    with pytest.raises(QueueError) as unreachable:
        q.publish("s", b"x")
    q.close()
    texts.append(_exception_text(unreachable.value))

    records = caplog.records
    texts += [caplog.text] + [r.getMessage() for r in records] + [repr(r.args) for r in records]
    _assert_no_secret(texts)

    # The test could fail: both emitted log lines that quote their (redacted) URL, and errors that name it.
    live_lines = [r.getMessage() for r in records if r.name.startswith("pipeline.camera.sources")]
    queue_lines = [r.getMessage() for r in records if r.name.startswith("pipeline.transport.queues")]
    assert any("rtsp://user:***@127.0.0.1:1/stream?token=***" in line for line in live_lines), live_lines
    assert any("redis://:***@127.0.0.1:1/0?password=***" in line for line in queue_lines), queue_lines
    assert "cam-secret" in str(health.last_error) and "ftp://user:***@" in str(bad_scheme.value)
    assert "invalid Redis URL redis://:***@127.0.0.1:1/0?token=***" in str(bad_option.value)
    assert "unreachable" in str(unreachable.value)
