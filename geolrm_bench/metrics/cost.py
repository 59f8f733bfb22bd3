"""Wall time and peak memory of a block of code: ``with measure_cost(device) as cost: ...``.

After the block, ``cost.seconds`` is the wall time (``time.perf_counter``; on CUDA
the device is synchronised before the start and before the end, so queued kernels
are counted), ``cost.peak_memory_bytes`` / ``cost.peak_memory_gb`` the peak memory
and ``cost.device_name`` the GPU or CPU model.

Memory:
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at
  entry: tensors allocated by PyTorch's caching allocator (what papers report),
  not the reserved pool, not other processes; ``peak_reserved_bytes`` is
  ``torch.cuda.max_memory_reserved`` (the pool the allocator held, what nvidia-smi
  sees of this process's tensors).
- CPU: peak resident set size (RSS) of the whole process during the block, from a
  background thread sampling RSS (psutil, else /proc/self/statm) every
  ``sample_interval`` seconds, combined with ``resource.getrusage().ru_maxrss``:
  when the block raises the process's lifetime peak, that exact kernel high-water
  mark is used; otherwise the sampled maximum, which can miss a spike shorter than
  the interval. It includes everything already resident at entry (Python, torch,
  model weights); ``baseline_memory_bytes`` is the RSS at entry, so
  ``peak_memory_bytes - baseline_memory_bytes`` is the growth.

GB here means GiB (2**30 bytes), as ``torch.cuda`` figures are usually quoted.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from geolrm_bench.errors import BenchError


@dataclass
class CostResult:
    """Filled in when the ``measure_cost`` block ends (``seconds`` is NaN until then)."""

    device: str = "cpu"
    device_name: str = ""
    seconds: float = float("nan")
    peak_memory_bytes: int = 0
    baseline_memory_bytes: int = 0
    memory_method: str = ""  # "cuda-max-allocated" | "rss-ru_maxrss" | "rss-sampled"
    peak_reserved_bytes: int = 0  # CUDA: max_memory_reserved (the caching allocator's pool); CPU: 0

    @property
    def peak_memory_gb(self) -> float:
        return self.peak_memory_bytes / 2**30

    def as_dict(self) -> dict:
        return {"seconds": self.seconds, "peak_memory_bytes": self.peak_memory_bytes,
                "peak_memory_gb": self.peak_memory_gb, "baseline_memory_bytes": self.baseline_memory_bytes,
                "memory_method": self.memory_method, "device": self.device, "device_name": self.device_name,
                "peak_reserved_bytes": self.peak_reserved_bytes}


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (Linux), else ``platform.processor()`` / machine."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


_PROCESS: list = []  # cached psutil.Process of this pid (psutil is optional)


def current_rss_bytes() -> int:
    """Resident set size of this process now (bytes)."""
    try:
        import psutil

        if not _PROCESS or _PROCESS[0].pid != os.getpid():
            _PROCESS[:] = [psutil.Process()]
        return int(_PROCESS[0].memory_info().rss)
    except ImportError:
        pass
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return max_rss_bytes()


def max_rss_bytes() -> int:
    """Lifetime peak RSS of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"measure_cost: device {device} requested but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


@contextlib.contextmanager
def measure_cost(device: str | torch.device | None = None, sample_interval: float = 0.005
                 ) -> Iterator[CostResult]:
    """Measure wall time and peak memory of the enclosed block.

    Args:
        device: where the work runs; ``None`` = the current CUDA device when CUDA is
            available, else the CPU. Pass ``"cpu"`` explicitly for CPU runs on a GPU host.
        sample_interval: seconds between RSS samples on the CPU.

    Yields:
        A :class:`CostResult`, filled in when the block exits (also on an exception).
    """
    dev = _resolve_device(device)
    result = CostResult(device=str(dev))
    if dev.type == "cuda":
        result.device_name = torch.cuda.get_device_name(dev)
        result.memory_method = "cuda-max-allocated"
        torch.cuda.synchronize(dev)
        result.baseline_memory_bytes = int(torch.cuda.memory_allocated(dev))
        torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        try:
            yield result
        finally:
            torch.cuda.synchronize(dev)
            result.seconds = time.perf_counter() - t0
            result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(dev))
            result.peak_reserved_bytes = int(torch.cuda.max_memory_reserved(dev))
        return

    result.device_name = cpu_name()
    start_maxrss = max_rss_bytes()
    result.baseline_memory_bytes = current_rss_bytes()
    peak = [result.baseline_memory_bytes]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(sample_interval):
            peak[0] = max(peak[0], current_rss_bytes())

    thread = threading.Thread(target=sample, name="measure_cost-rss", daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - t0
        stop.set()
        thread.join()
        peak[0] = max(peak[0], current_rss_bytes())
        end_maxrss = max_rss_bytes()
        if end_maxrss > start_maxrss:  # the block set a new lifetime high-water mark
            result.peak_memory_bytes = max(end_maxrss, peak[0])
            result.memory_method = "rss-ru_maxrss"
        else:
            result.peak_memory_bytes = peak[0]
            result.memory_method = "rss-sampled"
