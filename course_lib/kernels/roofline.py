"""Roofline arithmetic: why decoding one token is limited by memory bandwidth, not by compute.

A linear layer y = x Wᵀ with x of shape (m, k) and W of shape (n, k) does 2·m·k·n FLOPs and must
move at least (k·n + m·k + m·n) elements. Its arithmetic intensity is FLOPs per byte moved. A GPU
with peak compute P (FLOP/s) and bandwidth B (byte/s) is memory-bound below the ridge point P/B:
there the time is bytes/B, however fast the tensor cores are.
"""

from __future__ import annotations

from dataclasses import dataclass


def linear_flops(m: int, k: int, n: int) -> int:
    """FLOPs of (m,k) @ (k,n): one multiply and one add per term."""
    _check_positive(m=m, k=k, n=n)
    return 2 * m * k * n


def linear_bytes(m: int, k: int, n: int, bytes_per_element: float = 2.0) -> float:
    """Minimum bytes moved: read W (k·n) and x (m·k), write y (m·n)."""
    _check_positive(m=m, k=k, n=n)
    return (k * n + m * k + m * n) * bytes_per_element


def arithmetic_intensity(m: int, k: int, n: int, bytes_per_element: float = 2.0) -> float:
    """FLOPs per byte of a linear layer; about m for fp16 when m is much smaller than k and n."""
    return linear_flops(m, k, n) / linear_bytes(m, k, n, bytes_per_element)


@dataclass(frozen=True)
class Machine:
    """Peak compute (FLOP/s) and memory bandwidth (byte/s) of a device."""

    name: str
    flops: float
    bandwidth: float

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where compute and memory time are equal."""
        return self.flops / self.bandwidth

    def time_bound(self, flops: float, nbytes: float) -> float:
        """Roofline lower bound on the time in seconds: the slower of compute and memory."""
        return max(flops / self.flops, nbytes / self.bandwidth)

    def bound_by(self, intensity: float) -> str:
        return "memory" if intensity < self.ridge else "compute"


def _check_positive(**sizes: int) -> None:
    bad = {k: v for k, v in sizes.items() if int(v) != v or v < 1}
    if bad:
        raise ValueError(f"Matrix sizes must be positive integers, got {bad}.")
