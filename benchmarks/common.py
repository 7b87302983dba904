"""Measurement tools shared by the benchmarks: timing, peak memory, the matmul peak, output comparison.

Every number a benchmark reports comes from one of these, so they say exactly what they measure:

* :func:`time_calls`: wall clock per call (CUDA synchronised), after untimed warmup calls;
* :func:`peak_memory`: CUDA ``max_memory_allocated``, or the CPU resident set size sampled every
  millisecond (see :func:`set_malloc` for making RSS follow the live tensors);
* :class:`MatmulPeak`: the best FLOP/s of a large square matmul, re-measured between cases;
* :func:`compare`: max abs difference and PSNR of a fast path's output against the plain path's;
* :func:`machine_info`: the CPU model, cores, GPU and library versions a result came from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

MIB = 2**20
GIB = 2**30
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_device() -> str:
    """The best available device: CUDA when present, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """Median and fastest of a list of call times."""
    return {"median_s": statistics.median(times), "best_s": min(times)}


@dataclass
class MemoryReading:
    """Peak memory of a measured section: absolute, and above the level when it started."""

    peak_bytes: int | None = None
    delta_bytes: int | None = None
    method: str = ""


@contextmanager
def peak_memory(device: torch.device) -> Iterator[MemoryReading]:
    """Measure peak memory while the body runs.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, not the caching allocator's reserve).
    CPU: the process resident set size, sampled every millisecond by psutil when it is installed,
    else the ``ru_maxrss`` high-water mark (which only moves when the section sets a new
    lifetime peak, so its delta can read 0).
    """
    reading = MemoryReading()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield reading
        synchronize(device)
        reading.peak_bytes = torch.cuda.max_memory_allocated(device)
        reading.delta_bytes = reading.peak_bytes - start
        reading.method = "torch.cuda.max_memory_allocated"
        return
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is None:
        start = _max_rss_bytes()
        yield reading
        reading.peak_bytes = _max_rss_bytes()
        reading.delta_bytes = reading.peak_bytes - start
        reading.method = "resource.getrusage ru_maxrss"
        return
    process = psutil.Process()
    start = process.memory_info().rss
    samples = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            samples.append(process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield reading
    finally:
        done.set()
        sampler.join()
    samples.append(process.memory_info().rss)
    reading.peak_bytes = max(samples)
    reading.delta_bytes = reading.peak_bytes - start
    reading.method = "psutil rss, sampled every 1 ms"


def _max_rss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
MALLOC_MODES = {
    "default": "glibc defaults: blocks over the (adaptive, at most 32 MiB) mmap threshold are mapped "
               "per allocation and unmapped on free",
    "retain": "no mmap for tensors and no trimming (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB, "
              "M_TOP_PAD=256 MiB): freed tensor memory stays mapped and is reused, so a forward pass "
              "touches no fresh pages",
    "track": "every block of 1 MiB or more is mapped and unmapped on free (M_MMAP_THRESHOLD=1 MiB, "
             "M_TRIM_THRESHOLD=0): the resident set follows the live tensors, for peak-memory readings",
}


def set_malloc(mode: str) -> bool:
    """Switch the glibc allocator's policy for big blocks at run time (see :data:`MALLOC_MODES`).

    Returns False (and changes nothing) where glibc's ``mallopt`` is unavailable. This is a
    process-wide setting for benchmarks, not something the library does: a real application would
    use the equivalent ``MALLOC_*`` environment variables or a caching allocator (jemalloc, tcmalloc).
    """
    if mode not in MALLOC_MODES:
        raise ValueError(f"unknown malloc mode {mode!r}; valid: {', '.join(MALLOC_MODES)}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return False
    if mode == "retain":
        settings = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2**31 - 1, _M_TOP_PAD: 256 * MIB}
    elif mode == "track":
        settings = {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: MIB, _M_TRIM_THRESHOLD: 0, _M_TOP_PAD: 0}
    else:  # glibc's defaults (the mmap threshold becomes adaptive again only in a fresh process)
        settings = {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: 128 * 1024, _M_TRIM_THRESHOLD: 128 * 1024,
                    _M_TOP_PAD: 128 * 1024}
    ok = all(mallopt(ctypes.c_int(key), ctypes.c_int(value)) == 1 for key, value in settings.items())
    if mode != "retain":
        trim(ctypes.c_size_t(0))  # hand back what the previous policy kept
    return ok


@dataclass
class MatmulPeak:
    """The machine's practical matmul peak in one dtype: the best of several timed square matmuls.

    On a shared machine other work only ever slows a matmul down, so the fastest reading is the
    best estimate of what the hardware can do; it is re-measured between cases and the best kept.
    """

    size: int
    samples_flops_per_s: list[float] = field(default_factory=list)

    @property
    def flops_per_s(self) -> float:
        """The best reading so far."""
        return max(self.samples_flops_per_s)

    def measure(self, device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
        """Time ``repeats`` matmuls, record the fastest and return its FLOP/s."""
        generator = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(self.size, self.size, device=device, dtype=dtype, generator=generator)
        b = torch.randn(self.size, self.size, device=device, dtype=dtype, generator=generator)
        times = time_calls(lambda: torch.mm(a, b), device, repeats, warmup=2)
        self.samples_flops_per_s.append(2 * self.size**3 / min(times))
        return self.samples_flops_per_s[-1]

    def record(self) -> dict[str, Any]:
        """The JSON form: size, best FLOP/s and every reading."""
        return {"size": self.size, "flops_per_s": self.flops_per_s, "samples_flops_per_s": self.samples_flops_per_s}


class MatmulPeaks:
    """One :class:`MatmulPeak` per dtype, measured on demand on one device."""

    def __init__(self, device: torch.device, size: int | None = None):
        self.device, self.size = device, size or default_peak_size(device)
        self.by_dtype: dict[torch.dtype, MatmulPeak] = {}

    def measure(self, dtype: torch.dtype) -> float:
        """Take one more reading in ``dtype``; returns it."""
        return self.by_dtype.setdefault(dtype, MatmulPeak(self.size)).measure(self.device, dtype)

    def best(self, dtype: torch.dtype) -> float:
        """The best reading in ``dtype`` so far (measuring one first if there is none)."""
        if dtype not in self.by_dtype:
            self.measure(dtype)
        return self.by_dtype[dtype].flops_per_s

    def record(self) -> dict[str, Any]:
        """The JSON form: per dtype name, size, best FLOP/s and every reading."""
        return {str(dtype).removeprefix("torch."): peak.record() for dtype, peak in self.by_dtype.items()}


def default_peak_size(device: torch.device) -> int:
    """Side of the square matmul used for the peak: 2048 on a CPU, 8192 on a GPU."""
    return 8192 if device.type == "cuda" else 2048


def compare(reference: torch.Tensor, candidate: torch.Tensor, data_range: float | None = None) -> dict[str, float]:
    """Max abs difference and PSNR (dB) of ``candidate`` against ``reference`` (same shape).

    PSNR = 10 log10(range^2 / MSE), with ``range`` = ``data_range`` (1 for videos in [0, 1]) or, for
    unbounded tensors such as model outputs, the reference's max minus min. Identical tensors
    give ``inf``.
    """
    reference, candidate = reference.detach().double().cpu(), candidate.detach().double().cpu()
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    error = candidate - reference
    mse = error.square().mean().item()
    span = data_range if data_range is not None else (reference.max() - reference.min()).item()
    psnr = math.inf if mse == 0 else 10 * math.log10(span**2 / mse)
    return {"max_abs_diff": error.abs().max().item(), "psnr_db": psnr, "data_range": span}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what :mod:`platform` reports."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")) -> list[str]:
    """Which of the vector-ISA flags that matter for matmul speed the CPU reports."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in wanted if flag in flags]


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where a result came from: CPU model, cores, threads, memory, GPU, versions, load."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / GIB, 1)
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15min"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / GIB, 1),
                    cuda=torch.version.cuda)
    return info


def device_name(device: torch.device) -> str:
    """A short name of the device for the tables: the GPU model, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} x{torch.get_num_threads()} threads"
