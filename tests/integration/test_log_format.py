"""LOG_FORMAT: text for a person at a terminal, JSON for a collector, unless set."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters.process.settings import load_settings
from cli import logs_as_json

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("log_format", "tty", "json"),
    [(None, True, False), (None, False, True), ("json", True, True), ("text", False, False)],
)
def test_the_default_follows_the_terminal(log_format: str | None, tty: bool, json: bool) -> None:
    settings = load_settings(**({"log_format": log_format} if log_format else {}))
    assert logs_as_json(settings, tty) is json


def first_log_line(stderr_tty: bool, **env: str) -> str:
    """The first line `llm-proxy serve` logs, with stderr a terminal (a pty) or a pipe."""
    reader, writer = pty.openpty() if stderr_tty else os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "CACHE_MODE": "off", "GRPC_PORT": "0", "METRICS_PORT": "0",
             "HTTP_PORT": "0", "WORKERS": "1",
             **env},
        stderr=writer,
    )  # fmt: skip
    os.close(writer)
    try:
        seen, deadline = b"", time.monotonic() + 30
        while b"\n" not in seen and time.monotonic() < deadline:
            if select.select([reader], [], [], 0.5)[0]:
                seen += os.read(reader, 4096)
        return seen.decode().splitlines()[0]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        os.close(reader)


def test_logs_are_text_on_a_terminal() -> None:
    line = first_log_line(stderr_tty=True)
    assert not line.startswith("{")
    assert "INFO" in line


def test_logs_are_json_through_a_pipe() -> None:
    assert first_log_line(stderr_tty=False).startswith('{"timestamp"')


def test_an_explicit_format_wins_on_a_terminal() -> None:
    assert first_log_line(stderr_tty=True, LOG_FORMAT="json").startswith('{"timestamp"')
