"""What every benchmark prints beside its figures: the machine, its load, percentiles.

Other programs may share the CPUs while a benchmark runs, so each run reports
how busy the machine was and how much of that was the benchmark's own
processes (this one and every process it started).
"""

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def memory_gib() -> float:
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def describe_machine(database: str) -> str:
    """One line: CPUs, model, RAM, Python and the database server."""
    return (
        f"{os.cpu_count()} CPUs ({cpu_model()}), {memory_gib():.1f} GiB RAM, "
        f"Python {platform.python_version()}, {database}"
    )


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB, from VmRSS in /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"process {pid} has no VmRSS line: it may be a zombie")


def _machine_jiffies() -> tuple[int, int]:
    """Return (busy, total) CPU jiffies of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        path = task / "children"
        if path.is_file():
            found += [int(x) for x in path.read_text().split()]
    return found


def _tree_jiffies(root: int) -> dict[int, int]:
    """Return user plus system jiffies of `root` and each descendant, by pid."""
    used: dict[int, int] = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            # Fields after the command name, which may contain spaces.
            rest = stat.rsplit(")", 1)[1].split()
            used[pid] = int(rest[11]) + int(rest[12])
            pending += _children(pid)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return used


@dataclass
class CpuShare:
    """CPU use over a measured interval, as shares of all CPUs (0 to 1)."""

    machine: float
    ours: float
    load_before: str
    load_after: str

    @property
    def others(self) -> float:
        return max(self.machine - self.ours, 0.0)

    def describe(self) -> str:
        return (
            f"CPUs {self.machine:.0%} busy: {self.ours:.0%} this benchmark's "
            f"processes, {self.others:.0%} others (PostgreSQL included); "
            f"load average {self.load_before} before, {self.load_after} after"
        )


class CpuMeter:
    """Measure machine-wide and own-process-tree CPU use between start and stop.

    A process of the tree that exits during the interval is left out of "ours"
    and counted as others, so keep the processes running until stop().
    """

    def __init__(self) -> None:
        self._machine = (0, 0)
        self._tree: dict[int, int] = {}
        self._load = ""

    def start(self) -> "CpuMeter":
        self._load = _load_average()
        self._tree = _tree_jiffies(os.getpid())
        self._machine = _machine_jiffies()
        return self

    def stop(self) -> CpuShare:
        busy, total = _machine_jiffies()
        tree = _tree_jiffies(os.getpid())
        ours = sum(used - self._tree.get(pid, 0) for pid, used in tree.items())
        elapsed = max(total - self._machine[1], 1)
        return CpuShare(
            machine=(busy - self._machine[0]) / elapsed,
            # /proc/stat counts jiffies of all CPUs, a process's stat its own.
            ours=min(ours / elapsed, 1.0),
            load_before=self._load,
            load_after=_load_average(),
        )


def _load_average() -> str:
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.is_file() else "unknown"


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile: `share` 0.99 is the 99th percentile."""
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def summarize_ms(seconds: list[float]) -> dict[str, float]:
    """Median, 99th percentile and maximum of durations, in milliseconds."""
    return {
        "median_ms": statistics.median(seconds) * 1000,
        "p99_ms": percentile(seconds, 0.99) * 1000,
        "max_ms": max(seconds) * 1000,
        "samples": len(seconds),
    }


@dataclass
class Report:
    """The lines a benchmark prints, and the same figures as JSON on request."""

    title: str
    lines: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self, text: str) -> None:
        self.lines.append(text)

    def emit(self, json_path: str | None) -> None:
        print(f"\n== {self.title} ==")
        for text in self.lines:
            print(text)
        if json_path:
            Path(json_path).write_text(json.dumps(self.figures, indent=1) + "\n")


class Stopwatch:
    def __init__(self) -> None:
        self.began = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.began


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and its reaped children; 0 if gone.

    PostgreSQL's postmaster reaps each closed connection's backend, so the
    backends that come and go under load count through it.
    """
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    jiffies = sum(int(value) for value in rest[11:15])  # utime stime cutime cstime
    return jiffies / os.sysconf("SC_CLK_TCK")


def pids_named(command: str) -> list[int]:
    """Process ids whose command name (/proc/PID/comm) is `command`."""
    found = []
    for path in Path("/proc").glob("[0-9]*/comm"):
        try:
            if path.read_text().strip() == command:
                found.append(int(path.parent.name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def tree_pids(root: int) -> list[int]:
    """A process and all its descendants."""
    return list(_tree_jiffies(root))


class CpuBreakdown:
    """CPU seconds that named groups of processes used between start and stop.

    `groups` is called at start and at stop, so a process that appears in
    between (a new database connection) counts from zero.
    """

    def __init__(self, groups: Callable[[], dict[str, list[int]]]) -> None:
        self._groups = groups
        self._start: dict[int, float] = {}

    def start(self) -> "CpuBreakdown":
        self._start = {
            pid: cpu_seconds(pid) for pids in self._groups().values() for pid in pids
        }
        return self

    def stop(self) -> dict[str, float]:
        return {
            name: sum(cpu_seconds(pid) - self._start.get(pid, 0.0) for pid in pids)
            for name, pids in self._groups().items()
        }


def describe_cpu_per_call(cpu: dict[str, float], calls: int) -> str:
    """CPU milliseconds per call in total and by process group, largest first."""
    parts = [
        f"{name} {seconds / calls * 1000:.1f}"
        for name, seconds in sorted(cpu.items(), key=lambda item: -item[1])
    ]
    total = sum(cpu.values()) / calls * 1000
    return f"{total:.1f} ms ({', '.join(parts)})"
