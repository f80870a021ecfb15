"""What every benchmark reports the same way: the machine it ran on, and Markdown tables.

Benchmarks run as scripts (`python benchmarks/NAME.py`), so this folder is on `sys.path` and
they import `from _common import machine, md_table`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine(threads: int | None = None) -> str:
    """One line for a results file: CPU, cores, the load average now (above about 0.5: other
    jobs shared the cores, and times are upper bounds), torch and its threads, Python."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    threads = torch.get_num_threads() if threads is None else threads
    return (f"{cpu_name()}, {cores()} cores (load average {load} at the end: above about 0.5 "
            f"means other jobs shared the cores), torch {torch.__version__}, {threads} torch "
            f"thread(s), Python {platform.python_version()}")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the first column left-aligned, the others (numbers) right-aligned."""
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
