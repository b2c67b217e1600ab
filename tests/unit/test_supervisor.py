"""The worker count's default and the port claim (adapters/process/supervisor.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from adapters.process.supervisor import PortTaken, SharedPort, _cgroup_quota, claim


def test_cgroup_v2_quota_rounds_up(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_quota(tmp_path) == 2


def test_cgroup_v2_without_a_limit_gives_no_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_quota(tmp_path) == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_quota(tmp_path) is None


def test_a_claimed_port_admits_reuseport_workers_and_refuses_anyone_else() -> None:
    holder = claim(SharedPort("GRPC_PORT", "127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen()
        with pytest.raises(PortTaken, match="Set GRPC_PORT"):
            claim(SharedPort("GRPC_PORT", "127.0.0.1", port))  # a second supervisor
        with socket.socket() as plain, pytest.raises(OSError, match="in use"):
            plain.bind(("127.0.0.1", port))  # a single-process instance
        worker.close()
    finally:
        holder.close()
