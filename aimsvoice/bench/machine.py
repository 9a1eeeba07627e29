"""What a benchmark ran on: CPU, memory, GPU, software versions, and how busy the CPU was."""

from __future__ import annotations

import os
import platform
import resource
import sys
from typing import Any

import torch


def describe_machine(device: torch.device, load_average_1min: float) -> dict[str, Any]:
    """The facts a figure needs beside it to be comparable; the load average is taken before the run."""
    facts: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1min": round(load_average_1min, 2),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return facts


def peak_memory(device: torch.device) -> tuple[str, int]:
    """("cuda max allocated" | "peak RSS", bytes): the high-water mark since `reset_peak_memory` (CUDA) or the process start."""
    if device.type == "cuda":
        return "cuda max allocated", int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return "peak RSS", int(rss if sys.platform == "darwin" else rss * 1024)  # macOS reports bytes, Linux KiB


def reset_peak_memory(device: torch.device) -> None:
    """Start a new high-water mark on CUDA (the process's peak RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
