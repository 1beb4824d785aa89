"""What the benchmark scripts need to know about the machine they time on: the CPU model, and how much
of the CPUs other processes used meanwhile (the machines are shared; a timing taken while something else
ran is not trustworthy)."""

from __future__ import annotations

import os
import platform
import re
import resource
import time


def read_text(path: str) -> str:
    """The file's text, or "" where it cannot be read (not Linux, no permission)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", read_text("/proc/cpuinfo"), re.M)
    return m.group(1).strip() if m else platform.processor() or "unknown"


class LoadMeter:
    """CPU time used by *other* processes since :meth:`start`, as a fraction of all CPUs: the busy time of
    /proc/stat minus this process's own user + system time."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.ncpu = os.cpu_count() or 1
        self.start()

    @staticmethod
    def _busy() -> int | None:
        line = read_text("/proc/stat").splitlines()[:1]
        if not line or not line[0].startswith("cpu "):
            return None
        v = [int(x) for x in line[0].split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        return sum(v[:8]) - idle  # busy jiffies (user nice system idle iowait irq softirq steal)

    @staticmethod
    def _own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    def background_fraction(self) -> float | None:
        busy, wall = self._busy(), time.perf_counter() - self.t0
        if busy is None or self.busy0 is None or wall <= 0:
            return None
        foreign = (busy - self.busy0) / self.hz - (self._own() - self.own0)
        return max(0.0, foreign / (wall * self.ncpu))


def wait_idle(max_wait: float, threshold: float = 0.05, probe: float = 1.0) -> float | None:
    """Sleep until other processes use < ``threshold`` of the CPUs (probed over ``probe`` s), at most
    ``max_wait`` s. Returns the last background fraction."""
    deadline = time.perf_counter() + max_wait
    while True:
        meter = LoadMeter()
        time.sleep(probe)
        bg = meter.background_fraction()
        if bg is None or bg < threshold or time.perf_counter() >= deadline:
            return bg
