"""Shared helpers for the benchmark scripts: machine facts, results, tables, ports, Redis.

Every script prints a table and writes ``benchmarks/results/<name>.json`` with
the machine it ran on (cores, CPU model, versions, engine implementation) next
to each figure, so a result file says where its numbers come from.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PROTO_DIR = REPO_ROOT / "proto"
LOOPBACK = "127.0.0.1"


# -- machine -----------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def engine_implementation() -> str:
    try:
        import tiergate.engine as engine
    except ImportError as exc:
        return f"unavailable ({exc})"
    return str(engine.IMPLEMENTATION)


def machine_info() -> dict[str, Any]:
    """Where the figures come from: cores, CPU, interpreter and library versions."""
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "protobuf_backend": _protobuf_backend(),
        "uvloop": _version("uvloop"),
        "cython": _version("Cython"),
        "redis_py": _version("redis"),
        "tiergate": _version("tiergate"),
        "engine": engine_implementation(),
    }


def _protobuf_backend() -> str:
    try:
        from google.protobuf.internal import api_implementation
    except ImportError:
        return "unknown"
    return str(api_implementation.Type())


# -- results -----------------------------------------------------------------


def write_results(name: str, payload: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Write ``<results_dir>/<name>.json`` with the machine facts and a timestamp."""
    out_dir = results_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        **payload,
    }
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def fmt(value: Any) -> str:
    """A number for a table: thousands separators, sensible precision."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print an aligned text table; first column left-aligned, numbers right-aligned."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    print()
    print(title)
    line = "  ".join(
        h.ljust(widths[i]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(headers)
    )
    print(line)
    print("-" * len(line))
    for row in cells:
        print(
            "  ".join(
                c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)
            )
        )
    sys.stdout.flush()


def parser(doc: str | None, quick: str, tiny: str | None = None) -> argparse.ArgumentParser:
    """A script's argument parser, its description the first line of ``doc``, with
    ``--quick`` (``quick``: what it does then), ``--tiny`` (when ``tiny`` says what
    it does then) and ``--results-dir``; the script adds its own options."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    p.add_argument("--quick", action="store_true", help=quick)
    if tiny is not None:
        p.add_argument("--tiny", action="store_true", help=tiny)
    p.add_argument("--results-dir", type=Path, default=None)
    return p


def report(
    name: str,
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    results: dict[str, Any],
    results_dir: Path | None,
) -> None:
    """The machine, one table and the load average printed; ``results`` written as
    ``<name>.json`` (:func:`write_results`), its path printed."""
    print_machine()
    print_table(title, headers, rows)
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"wrote {write_results(name, results, results_dir)}")


def print_machine() -> None:
    m = machine_info()
    print(
        f"machine: {m['cores']} cores, {m['cpu_model']}; Python {m['python']}, "
        f"grpcio {m['grpcio']}, protobuf {m['protobuf']} ({m['protobuf_backend']}), "
        f"uvloop {m['uvloop']}, Cython {m['cython']}; tiergate engine: {m['engine']}"
    )
    sys.stdout.flush()


# -- network -----------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout:.0f} s")


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent(parent: int) -> None:
    """Ask for SIGTERM when ``parent`` (this process's parent) ends, even by SIGKILL
    (Linux; elsewhere it does nothing); exit at once if it has already ended."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before prctl took effect
        os._exit(1)


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for servers a benchmark starts: the child gets SIGTERM when
    the benchmark's process ends, even by SIGKILL, so no redis-server or tiergate
    serve outlives it (Linux; elsewhere it does nothing). Start children from the
    main thread: the signal follows the thread that started the child."""
    parent = os.getpid()

    def preexec() -> None:
        end_with_parent(parent)

    return preexec


def exit_on_sigterm() -> None:
    """Make SIGTERM end the benchmark like Ctrl-C: ``finally`` blocks and context
    managers run, so the servers it started are stopped and temporary data
    directories removed."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the command name: state is fields[0]; utime, stime are stat fields 14, 15
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# -- generated gRPC code -----------------------------------------------------


def load_stubs() -> tuple[ModuleType, ModuleType]:
    """(admission_pb2, admission_pb2_grpc): the committed ones, else generated from proto/.

    The fallback compiles ``proto/tiergate/v1/admission.proto`` into a temporary
    directory with grpc_tools.protoc, so the benchmarks run on a tree whose
    generated code is missing.
    """
    try:
        pb2 = importlib.import_module("tiergate.v1.admission_pb2")
        pb2_grpc = importlib.import_module("tiergate.v1.admission_pb2_grpc")
        return pb2, pb2_grpc
    except ImportError:
        pass
    out = Path(tempfile.mkdtemp(prefix="tiergate-bench-proto-"))
    src = PROTO_DIR / "tiergate" / "v1"
    from grpc_tools import protoc  # dev dependency

    rc = protoc.main(
        [
            "protoc",
            f"-I{src}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(src / "admission.proto"),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with code {rc}")
    sys.path.insert(0, str(out))
    return importlib.import_module("admission_pb2"), importlib.import_module("admission_pb2_grpc")


# -- redis-server ------------------------------------------------------------


class RedisMissing(RuntimeError):
    """No redis-server binary: the Redis comparison cannot run."""


def find_redis_server() -> str:
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if path is None:
        raise RedisMissing(
            "redis-server not found: run `make system-deps` (installs Debian's redis-server "
            "package with apt-get) or put redis-server on PATH"
        )
    return path


def redis_missing(name: str, results_dir: Path | None) -> bool:
    """Whether redis-server is missing; if so, print why and write ``<name>.json``
    saying the benchmark was skipped."""
    try:
        find_redis_server()
    except RedisMissing as e:
        print(f"skipped: {e}")
        write_results(name, {"skipped": str(e)}, results_dir)
        return True
    return False


@contextlib.contextmanager
def redis_server(timeout: float = 10.0) -> Iterator[int]:
    """Start a throwaway redis-server on a free 127.0.0.1 port; yield the port; stop it.

    No persistence (no RDB, no AOF), so the figures measure Redis's in-memory
    path, the fastest configuration a user could pick.
    """
    binary = find_redis_server()
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="tiergate-bench-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            LOOPBACK,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent(),
    )
    try:
        wait_for_port(port, timeout, proc)
        yield port
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


# -- statistics --------------------------------------------------------------


def new_histogram() -> Any:
    """An HdrHistogram of latencies in microseconds, 1 µs .. 60 s, 3 significant digits."""
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, 60_000_000, 3)


def histogram_summary(hist: Any) -> dict[str, float | int]:
    """Latency percentiles in milliseconds from a microsecond histogram."""
    n = int(hist.get_total_count())
    if n == 0:
        return {"count": 0}
    return {
        "count": n,
        "mean_ms": hist.get_mean_value() / 1000.0,
        "p50_ms": hist.get_value_at_percentile(50.0) / 1000.0,
        "p90_ms": hist.get_value_at_percentile(90.0) / 1000.0,
        "p99_ms": hist.get_value_at_percentile(99.0) / 1000.0,
        "p999_ms": hist.get_value_at_percentile(99.9) / 1000.0,
        "max_ms": hist.get_max_value() / 1000.0,
    }
