"""WORKERS=N: N `llm-proxy serve` processes on the same ports, one supervisor.

The supervisor claims every listening port first: it binds each one without SO_REUSEPORT (so a
port that anything else holds, another llm-proxy included, fails with a message naming its
setting), then holds it with a bound, never-listening SO_REUSEPORT socket until it exits. Only
then do the workers bind the same ports with SO_REUSEPORT (the kernel spreads connections over
them). A second llm-proxy, single- or multi-worker, probes without SO_REUSEPORT and so cannot
join our group; a port given as 0 is resolved once, by the supervisor, for all workers.

Metrics: the workers share a fresh PROMETHEUS_MULTIPROC_DIR, and any worker's /metrics shows the
sum over all of them (prometheus_client's multiprocess mode; see adapters/outbound/observability/
prometheus.py for the per-metric choices).

The embedded cache's vector index: a Qdrant Edge shard can be open in one process only, so with
`shared_index` the supervisor first starts one more process, `llm-proxy serve --vector-index
SOCKET`, which owns CACHE_DIR/vectors and serves it on a unix socket in the supervisor's private
runtime directory; every worker's semantic cache uses it (adapters/outbound/vector/shared.py), so
an answer stored by one worker is found by all. Workers wait up to INDEX_STARTUP for the socket.
The index process is only a cache: if it dies, the workers' semantic lookups miss (they fail
open) and the supervisor starts it again, after 1 s, then 2, 4, ... up to 30 s.

Shutdown: SIGTERM or SIGINT to the supervisor is passed to every worker, each drains within
SHUTDOWN_GRACE, then the index process is stopped (it flushes the shard), and the supervisor
exits 0 when all workers exited 0. A worker that dies on its own is not restarted: the
supervisor drains the others and exits 1, so that the orchestrator restarts the whole container
(a crash loop stays visible, and no half-sized proxy keeps serving).
A supervisor that dies without passing anything on (SIGKILL, OOM) takes its workers and its
index process with it: each asks the kernel for SIGTERM when its parent dies
(PR_SET_PDEATHSIG), and stops as on any SIGTERM, so no orphan keeps serving ports nobody
supervises.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("llm_proxy")

WORKER_FLAG = "--worker"
"""`llm-proxy serve --worker N`: the supervisor's worker N (binds with SO_REUSEPORT)."""
INDEX_FLAG = "--vector-index"
"""`llm-proxy serve --vector-index SOCKET`: the process serving the embedded vector index."""
INDEX_SOCKET_FLAG = "--index-socket"
"""`llm-proxy serve --worker N --index-socket SOCKET`: where the worker finds the index."""
STOP_MARGIN = 10.0  # seconds past SHUTDOWN_GRACE before a worker is killed
INDEX_STARTUP = 10.0  # seconds the workers' start waits for the index process's socket
INDEX_RESTART_MAX = 30.0
SUPERVISOR_PID = "LLM_PROXY_SUPERVISOR_PID"  # set for the workers: whom to die with
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_supervisor() -> None:
    """In a worker: SIGTERM from the kernel when the supervisor dies, however it dies (Linux);
    already dead (between fork and here): SIGTERM now. Elsewhere, or outside a supervisor,
    nothing."""
    supervisor = os.environ.get(SUPERVISOR_PID)
    if not supervisor or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    if os.getppid() != int(supervisor):
        os.kill(os.getpid(), signal.SIGTERM)


class PortTaken(Exception):
    """A port cannot be claimed; the message names its setting."""


def cpu_quota() -> int:
    """The CPUs this process may use: the cgroup CPU quota (v2 cpu.max, v1 cfs_quota_us over
    cfs_period_us, rounded up), else the CPUs it may run on, at least 1."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_quota(Path("/sys/fs/cgroup"))
    return max(1, min(quota or allowed or 1, allowed or 1))


def _cgroup_quota(root: Path) -> int | None:
    try:
        fields = (root / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return -(-int(fields[0]) // int(fields[1]))
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return -(-quota // period) if quota > 0 and period > 0 else None


@dataclass(frozen=True, slots=True)
class SharedPort:
    """A port every worker listens on: `setting` names it in errors and in the workers' env."""

    setting: str
    host: str
    port: int


def claim(port: SharedPort) -> socket.socket:
    """Binds `port` exclusively to check nobody holds it, then holds it with SO_REUSEPORT;
    returns the holding socket (its port is the one to use when `port.port` was 0)."""
    family = socket.AF_INET6 if ":" in port.host else socket.AF_INET
    host = port.host.strip("[]")
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            probe.bind((host, port.port))
            number = probe.getsockname()[1]
            holder = socket.socket(family, socket.SOCK_STREAM)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.close()
            holder.bind((host, number))
    except OSError as error:
        raise PortTaken(
            f"cannot listen on {port.host}:{port.port} ({error.strerror or error}): is another "
            f"instance running? Set {port.setting} to a free port"
        ) from None
    return holder


class Supervisor:
    def __init__(
        self, workers: int, ports: Sequence[SharedPort], grace: float,
        command: Sequence[str] | None = None, shared_index: bool = False,
    ) -> None:  # fmt: skip
        self.workers = workers
        self.ports = ports
        self.grace = grace
        self.command = list(command or [sys.executable, "-m", "cli", "serve"])
        self.shared_index = shared_index
        self._stopping = False
        self._index: _IndexProcess | None = None

    def run(self) -> int:
        """Claims the ports (PortTaken), runs the workers until a signal or a worker's exit,
        stops them all; the exit code: 0 after a clean stop, else the first failure's."""
        holders = [claim(port) for port in self.ports]
        runtime = tempfile.mkdtemp(prefix="llm-proxy-")  # private (0700): metrics, the socket
        directory = os.path.join(runtime, "metrics")
        os.mkdir(directory)
        try:
            env = self._worker_env(holders, directory)
            if self.shared_index:
                socket_path = os.path.join(runtime, "vectors.sock")
                self._index = _IndexProcess([*self.command, INDEX_FLAG, socket_path], env)
                self.command += [INDEX_SOCKET_FLAG, socket_path]
            return self._supervise(env, directory)
        finally:
            if self._index is not None:
                self._index.stop(self.grace + STOP_MARGIN)
            for holder in holders:
                holder.close()
            shutil.rmtree(runtime, ignore_errors=True)

    def _worker_env(self, holders: Sequence[socket.socket], directory: str) -> dict[str, str]:
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=directory, WORKERS="1")
        env[SUPERVISOR_PID] = str(os.getpid())
        for port, holder in zip(self.ports, holders, strict=True):
            env[port.setting] = str(holder.getsockname()[1])
        return env

    def _supervise(self, env: Mapping[str, str], directory: str) -> int:
        def stop(signum: int, _frame: object) -> None:
            self._stopping = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        children: list[subprocess.Popen[bytes]] = []
        code = 0
        try:
            if self._index is not None:
                self._index.start(wait=INDEX_STARTUP)
            for n in range(self.workers):
                command = [*self.command, WORKER_FLAG, str(n)]
                children.append(subprocess.Popen(command, env=dict(env)))
            log.info(
                "supervising %d workers (pids %s) on %s", self.workers,
                ", ".join(str(c.pid) for c in children),
                ", ".join(f"{p.setting}={env[p.setting]}" for p in self.ports),
            )  # fmt: skip
            while not self._stopping:
                ended = next((c for c in children if c.poll() is not None), None)
                if ended is not None:
                    code = ended.returncode if ended.returncode > 0 else 1
                    log.error(
                        "worker %d exited with %s; stopping the others", ended.pid,
                        ended.returncode,
                    )  # fmt: skip
                    break
                if self._index is not None:
                    self._index.keep_running()
                time.sleep(0.1)
            return max(code, self._stop(children, directory))
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, children: Sequence[subprocess.Popen[bytes]], directory: str) -> int:
        """SIGTERM to each running worker, then waits for the drains; the worst exit code."""
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + STOP_MARGIN
        code = 0
        for child in children:
            try:
                returned = child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %.0fs; killing it", child.pid,
                          self.grace + STOP_MARGIN)  # fmt: skip
                child.kill()
                returned = child.wait()
            code = max(code, returned if returned >= 0 else 1)
            _mark_dead(child.pid, directory)
        return code


class _IndexProcess:
    """The process serving the embedded vector index; started again when it dies."""

    def __init__(self, command: list[str], env: Mapping[str, str]) -> None:
        self._command = command
        self._env = dict(env)
        self._socket = command[-1]
        self._process: subprocess.Popen[bytes] | None = None
        self._delay = 1.0
        self._restart_at = 0.0

    def start(self, wait: float) -> None:
        """Starts it and waits up to `wait` seconds for its socket."""
        self._process = subprocess.Popen(self._command, env=self._env)
        log.info("started the vector index process (pid %d)", self._process.pid)
        deadline = time.monotonic() + wait
        while not os.path.exists(self._socket) and time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.exists(self._socket):
            log.warning("the vector index process (pid %d) is not serving yet: semantic lookups "
                        "miss until it is", self._process.pid)  # fmt: skip

    def keep_running(self) -> None:
        """Starts it again when it died, no sooner than its back-off allows."""
        process = self._process
        if process is None or process.poll() is None:
            return
        now = time.monotonic()
        if not self._restart_at:
            log.error("the vector index process (pid %d) exited with %s: semantic lookups miss; "
                      "starting it again in %.0fs", process.pid, process.returncode,
                      self._delay)  # fmt: skip
            self._restart_at = now + self._delay
            self._delay = min(self._delay * 2, INDEX_RESTART_MAX)
        elif now >= self._restart_at:
            self._restart_at = 0.0
            self.start(wait=0.0)

    def stop(self, timeout: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the vector index process did not stop within %.0fs; killing it", timeout)
            process.kill()
            process.wait()


def _mark_dead(pid: int, directory: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
