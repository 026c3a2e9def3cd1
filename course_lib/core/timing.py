"""Timers shared by every benchmark: warm-up first, then the median (or the best of interleaved rounds).

    median_time(fn, device)              median seconds of one call, CUDA events on a GPU
    best_of_interleaved({"a": f, "b": g}) best seconds of each, the candidates taking turns
    device_slug()                        'NVIDIA H200' -> 'h200', the prefix of a result file's name
    copy_bandwidth_gbps(device), matmul_tflops(device)   the machine's two roofs, measured
"""

from __future__ import annotations

import statistics
import time


def device_timer(device):
    """Return a function that times fn() in seconds on `device` (CUDA events or perf_counter)."""
    import torch

    if device.type == "cuda":
        def time_cuda(fn) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1e3
        return time_cuda

    def time_cpu(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return time_cpu


def median_time(fn, device, reps: int = 30, warmup: int = 5, inner: int = 1) -> float:
    """Median seconds of one call of fn, over `reps` samples of `inner` calls each."""
    timer = device_timer(device)

    def block() -> None:
        for _ in range(inner):
            fn()

    for _ in range(warmup):
        block()
    return statistics.median(timer(block) for _ in range(reps)) / inner


def best_of_interleaved(fns: dict, repeats: int = 5, warmup: int = 1, device=None) -> dict[str, float]:
    """Best wall time (seconds) of each fn() over `repeats` rounds; every round runs each fn once in turn.

    Interleaving makes a slow patch of a shared machine hurt every candidate alike, and the best of
    several rounds drops the interruptions. device: a CUDA device to synchronize around each call.
    """
    import torch

    if not fns or repeats < 1:
        raise ValueError("best_of_interleaved needs at least one function and repeats >= 1.")
    cuda = device is not None and torch.device(device).type == "cuda"

    def once(fn) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], once(fn))
    return best


def device_slug(name: str | None = None) -> str:
    """A short file-name prefix for a GPU name (default: this GPU): 'NVIDIA H100 80GB HBM3' -> 'h100'."""
    import re

    import torch

    name = name or torch.cuda.get_device_name(0)
    match = re.search(r"\b([A-Z]+\d+[A-Za-z]*)\b", name.replace("NVIDIA", ""))
    return (match.group(1) if match else re.sub(r"\W+", "_", name.replace("NVIDIA", "").strip())).lower()


def copy_bandwidth_gbps(device, nbytes: int = 2 << 30, reps: int = 20) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), device, reps=reps)
    return 2 * nbytes / seconds / 1e9


def matmul_tflops(device, size: int = 8192, dtype=None, reps: int = 20) -> float:
    """Dense matmul throughput on random data, the compute roof."""
    import torch

    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = median_time(lambda: a @ b, device, reps=reps)
    return 2 * size**3 / seconds / 1e12


def cuda_graph_ms(fn, *, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of one replay of a CUDA graph that records fn() once: the GPU's time for the work,
    without the host's launch overhead (which exceeds a small kernel's run time). Warm-up runs on a side
    stream first, as capture requires (kernels compiled, workspaces allocated)."""
    import statistics

    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(warmup):
        g.replay()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    del g
    return statistics.median(samples)
