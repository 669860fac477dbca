"""stargz.sdnotify: the datagram systemd's Type=notify waits for, to a path or an abstract
socket, and nothing at all without $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from stargz import sdnotify


@pytest.fixture(name="receiver")
def receiver_fixture() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        yield sock


def test_ready_reaches_a_path_socket(receiver: socket.socket, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    receiver.bind(str(tmp_path / "notify"))
    monkeypatch.setenv(sdnotify.ENV_VAR, str(tmp_path / "notify"))
    assert sdnotify.notify("READY=1")
    assert receiver.recv(100) == b"READY=1"


def test_ready_reaches_an_abstract_socket(receiver: socket.socket,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"stargz-test-{os.getpid()}"
    receiver.bind("\0" + name)
    monkeypatch.setenv(sdnotify.ENV_VAR, "@" + name)
    assert sdnotify.notify("STATUS=serving\nREADY=1")
    assert receiver.recv(100) == b"STATUS=serving\nREADY=1"


def test_nothing_is_sent_without_a_service_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sdnotify.ENV_VAR, raising=False)
    assert not sdnotify.notify("READY=1")


def test_a_gone_manager_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(sdnotify.ENV_VAR, str(tmp_path / "nobody-listens"))
    assert not sdnotify.notify("READY=1")
    assert "could not tell the service manager" in caplog.text
