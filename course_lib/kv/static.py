"""A preallocated ("static") KV cache: fixed-size buffers written in place, what CUDA graphs need.

``KVCache`` grows by concatenation, so every step allocates new tensors of a new shape. A CUDA
graph replays a recorded sequence of kernels on fixed addresses and shapes, so serving engines
(and transformers' ``StaticCache``) preallocate the cache for ``max_len`` tokens and write each
new token into its slot. ``StaticKVCache`` does that with the interface of ``KVCache``:

    cache = StaticKVCache(n_layers, batch=4, n_kv_heads=8, head_dim=64, max_len=4096,
                          dtype=torch.bfloat16, device="cuda", storage="fp8")
    cache.set_length(1000)                         # pretend 1000 tokens are cached (benchmarks)
    logits = decoder(next_ids, cache=cache).logits # writes slot 1000, attends over 1001 keys

storage: "model" keeps keys and values in the model's dtype; "fp8" stores FP8 E4M3 codes with one
scale per layer (1.0 by default, vLLM's default without calibrated scales); "int8" stores int8 codes
with a scale per token and head (``kv.quant.int8_quantize``). The quantized storages dequantize the
cached tokens before attention at every step: PyTorch has no attention kernel that reads FP8 or
INT8 keys, so this is the memory saving's price without a fused kernel.
"""

from __future__ import annotations

import torch

from .quant import FP8_DTYPES, FP8_MAX, SCALE_DTYPE, int8_quantize

STORAGES = ("model", "fp8", "int8")


class StaticKVCache:
    """Per layer, keys and values in buffers of (batch, n_kv_heads, max_len, head_dim), filled in place."""

    def __init__(self, n_layers: int, *, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device=None, storage: str = "model", fp8_scale: float = 1.0):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}.")
        if min(n_layers, batch, n_kv_heads, head_dim, max_len) < 1:
            raise ValueError("n_layers, batch, n_kv_heads, head_dim and max_len must all be >= 1.")
        if not fp8_scale > 0:
            raise ValueError(f"fp8_scale must be positive, got {fp8_scale!r}.")
        self.n_layers, self.max_len, self.dtype, self.storage = n_layers, max_len, dtype, storage
        self.fp8_scale = fp8_scale
        shape = (batch, n_kv_heads, max_len, head_dim)
        code_dtype = {"model": dtype, "fp8": FP8_DTYPES["e4m3"], "int8": torch.int8}[storage]
        self.keys = [torch.zeros(shape, dtype=code_dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=code_dtype, device=device) for _ in range(n_layers)]
        if storage == "int8":  # one scale per token and head
            scale_shape = (*shape[:3], 1)
            self.key_scales = [torch.ones(scale_shape, dtype=SCALE_DTYPE, device=device) for _ in range(n_layers)]
            self.value_scales = [torch.ones(scale_shape, dtype=SCALE_DTYPE, device=device) for _ in range(n_layers)]
        self.lengths = [0] * n_layers

    def seq_len(self, layer: int = 0) -> int:
        return self.lengths[layer]

    def set_length(self, n: int) -> None:
        """Declare the first n slots of every layer cached (a benchmark fills nothing: timing ignores values)."""
        if not 0 <= n <= self.max_len:
            raise ValueError(f"length must be in 0..{self.max_len}, got {n}.")
        self.lengths = [n] * self.n_layers

    def _write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        end = start + k.shape[2]
        if self.storage == "model":
            self.keys[layer][:, :, start:end] = k
            self.values[layer][:, :, start:end] = v
        elif self.storage == "fp8":
            m = FP8_MAX["e4m3"]
            self.keys[layer][:, :, start:end] = (k / self.fp8_scale).clamp(-m, m)
            self.values[layer][:, :, start:end] = (v / self.fp8_scale).clamp(-m, m)
        else:
            for codes, scales, x in ((self.keys, self.key_scales, k), (self.values, self.value_scales, v)):
                c, s = int8_quantize(x)
                codes[layer][:, :, start:end] = c
                scales[layer][:, :, start:end] = s

    def _read(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        if self.storage == "model":
            return k, v  # views: attention reads the buffer itself
        k, v = k.to(self.dtype), v.to(self.dtype)  # dequantize every cached token: a full copy per step
        if self.storage == "fp8":
            return (k, v) if self.fp8_scale == 1.0 else (k.mul_(self.fp8_scale), v.mul_(self.fp8_scale))
        return k.mul_(self.key_scales[layer][:, :, :end]), v.mul_(self.value_scales[layer][:, :, :end])

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens' keys and values (B, H_kv, T, d) into their slots; return all cached so far."""
        start = self.lengths[layer]
        if start + k.shape[2] > self.max_len:
            raise ValueError(f"The cache holds {self.max_len} tokens; {start} are cached and {k.shape[2]} more "
                             "do not fit. Build it with a larger max_len.")
        if k.device != self.keys[layer].device:
            raise ValueError(f"New keys are on {k.device} but the cache is on {self.keys[layer].device}; "
                             "build the cache on the model's device.")
        self._write(layer, start, k, v)
        self.lengths[layer] = start + k.shape[2]
        return self._read(layer, self.lengths[layer])

    def nbytes(self) -> int:
        """Bytes of the preallocated buffers (all max_len slots, used or not)."""
        tensors = self.keys + self.values + getattr(self, "key_scales", []) + getattr(self, "value_scales", [])
        return sum(t.numel() * t.element_size() for t in tensors)
