"""Upstream simulator: OpenAI- and Gemini-compatible HTTP APIs with latency and faults.

Used for demos, tests and benchmarks only; the proxy never talks to it unless configured to.
See docs/simulator.md.
"""

from simulator.app import (
    FAULT_HEADER,
    SIMULATOR_KEY,
    RunningSimulator,
    Simulator,
    build_app,
    running_simulator,
    serve,
)
from simulator.config import SimulatorConfig
from simulator.content import embed_text, key_fingerprint
from simulator.faults import FaultSpecError, parse_fault_spec
from simulator.stats import SimulatorStats

__all__ = [
    "FAULT_HEADER",
    "SIMULATOR_KEY",
    "FaultSpecError",
    "RunningSimulator",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "build_app",
    "embed_text",
    "key_fingerprint",
    "parse_fault_spec",
    "running_simulator",
    "serve",
]
