"""What each process of a run costs, read from /proc: CPU seconds, peak memory, the machine."""

from __future__ import annotations

import contextlib
import os
import platform as platform_module
import shutil
import subprocess
from pathlib import Path

import aiohttp

from mplogin.bench.common import CLK_TCK, Json


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of ``pid`` from /proc/<pid>/stat, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of ``pid`` in MiB, or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def find_broker_pid() -> int | None:
    """The local RabbitMQ node's pid (``beam.smp``), if it runs on this machine."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == "beam.smp":
                return int(entry.name)
    return None


def machine_info() -> Json:
    """nproc, CPU model, memory, load, RabbitMQ and Python versions."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_mb = int(first.split()[1]) // 1024
    rabbit = "unknown"
    ctl = shutil.which("rabbitmqctl")
    if ctl is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(  # noqa: S603 - fixed arguments
                [ctl, "version"], capture_output=True, text=True, timeout=20, check=False
            )
            if done.returncode == 0 and done.stdout.strip():
                rabbit = done.stdout.strip().splitlines()[-1]
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total_mb": mem_mb,
        "loadavg_start": os.getloadavg(),
        "rabbitmq_version": rabbit,
        "python_version": platform_module.python_version(),
        "kernel": platform_module.release(),
        "aiohttp_version": aiohttp.__version__,
    }
