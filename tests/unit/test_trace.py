"""stargz.trace: one parseable DEBUG line per span or event, nothing at all when switched off."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from stargz import trace


@pytest.fixture
def trace_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(trace.LOGGER_NAME)
    level = logger.level
    yield logger
    logger.setLevel(level)


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == trace.LOGGER_NAME]


def test_off_nothing_is_logged_and_spans_are_the_one_no_op(
        caplog: pytest.LogCaptureFixture, trace_logger: logging.Logger) -> None:
    trace_logger.setLevel(logging.INFO)
    caplog.set_level(logging.INFO)
    with trace.span("toc_fetch", layer="sha256:ab") as span:
        span.set(bytes=10)
    trace.event("mount_ready", layer="sha256:ab")
    assert not trace.enabled()
    assert trace.span("a") is trace.span("b", x=1)  # nothing allocated per span
    assert _lines(caplog) == []


def test_span_line_has_phase_start_duration_and_fields(
        caplog: pytest.LogCaptureFixture, trace_logger: logging.Logger) -> None:
    caplog.set_level(logging.DEBUG)  # the handler passes everything (caplog restores both)
    logging.getLogger().setLevel(logging.INFO)  # the process logs at info...
    trace_logger.setLevel(logging.NOTSET)
    assert not trace.enabled()
    trace.enable()  # ...and --trace turns the lines on
    before = trace.since_epoch_ms()
    with trace.span("toc_fetch", layer="sha256:ab") as span:
        time.sleep(0.02)
        span.set(bytes=4096, requests=1)
    lines = [trace.parse(line) for line in _lines(caplog)]
    fields = next(f for f in lines if f is not None and f["phase"] == "toc_fetch")
    assert fields["layer"] == "sha256:ab"
    assert fields["bytes"] == "4096" and fields["requests"] == "1"
    assert float(fields["ms"]) >= 20.0  # the monotonic clock moved at least the sleep
    assert float(fields["t"]) >= round(before, 1) - 0.1
    assert caplog.records[-1].levelno == logging.DEBUG


def test_first_line_gives_the_epoch_on_the_monotonic_clock(
        caplog: pytest.LogCaptureFixture, trace_logger: logging.Logger,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "_announced", False)
    caplog.set_level(logging.DEBUG)
    trace_logger.setLevel(logging.NOTSET)
    now = time.monotonic()
    trace.event("startup_socket_ready")
    first, second = (trace.parse(line) for line in _lines(caplog))
    assert first is not None and second is not None
    assert first["phase"] == "epoch"
    epoch = float(first["mono"])
    assert epoch <= now
    # the event's t, placed on the monotonic clock through the epoch, is when it happened
    assert now - 0.001 <= epoch + float(second["t"]) / 1000 <= time.monotonic() + 0.001
    assert second["phase"] == "startup_socket_ready" and "ms" not in second


def test_failed_span_names_the_error_and_lets_it_through(
        caplog: pytest.LogCaptureFixture, trace_logger: logging.Logger) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(KeyError), trace.span("verify", layer="l"):
        raise KeyError("x")
    fields = trace.parse(_lines(caplog)[-1])
    assert fields is not None and fields["phase"] == "verify" and fields["error"] == "KeyError"


@pytest.mark.parametrize("value", ['a "quoted" b=c', "with space", "", "päth/ü", "x\\y"])
def test_values_round_trip_through_quoting(
        value: str, caplog: pytest.LogCaptureFixture, trace_logger: logging.Logger) -> None:
    caplog.set_level(logging.DEBUG)
    trace.event("read", path=value, size=3)
    fields = trace.parse("2026-01-01 DEBUG stargz.trace: " + _lines(caplog)[-1])
    assert fields is not None
    assert fields["path"] == value and fields["size"] == "3"


def test_parse_ignores_other_lines() -> None:
    assert trace.parse("2026 INFO stargz.snapshotter.lazy: layer x mounted lazily") is None
    assert trace.parse("tracer phase=x") is None
