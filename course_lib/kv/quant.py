"""KV cache quantization: FP8 (E4M3/E5M2), INT8 per token, KIVI-style 2/4-bit, with byte accounting.

A scheme says how cached keys and values are stored; two things use it:

* ``QuantizedCache(scheme, n_layers)``: a real cache, with the same ``update`` as ``KVCache``, that
  keeps codes and scales (sub-byte codes packed into uint8) and hands attention the dequantized
  tensors. ``nbytes()`` counts what it really holds.
* ``simulate(scheme)``: a ``kv_hook`` for ``CourseDecoder`` that gives, in one forward pass over a
  whole window, exactly the attention a token-by-token decode with that cache would compute (tested).
  Perplexity of a quantized cache is then as cheap as a normal perplexity run.

The schemes:

| scheme | keys | values | stored per number |
|---|---|---|---|
| FP8 E4M3 / E5M2 | x / s cast to fp8, one static scale per layer | same | 8 bits |
| INT8 | symmetric, a scale per token and head | same | 8 bits + 16/head_dim |
| KIVI b-bit | asymmetric, **per channel** over groups of G tokens | asymmetric, **per token** over groups of channels | b bits + scales; the newest R..R+G-1 tokens in full precision |

KIVI's split follows its paper's measurement, which the notebook repeats: keys have a few outlier
*channels* (fixed across tokens), so a per-channel scale isolates them; values have no channel
structure but vary by token. Keys are quantized after RoPE, as they sit in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import masked_softmax, repeat_kv

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
SCALE_DTYPE = torch.float16  # INT8 / KIVI scales and zero points


@dataclass(frozen=True)
class KVQuant:
    """How the cache stores keys and values.

    kind: "fp8", "int8" or "kivi".  fmt: "e4m3" | "e5m2" (fp8).  bits: 2 | 4 (kivi).
    group: KIVI's group, tokens per key scale and channels per value scale.
    key_axis, value_axis: KIVI's choice ("channel" for keys, "token" for values); swap them to see why.  residual: KIVI's
    full-precision window R.  scales: fp8 only, ((k_scale, v_scale) per layer); None means 1.0
    everywhere, which is what vLLM uses when a checkpoint carries no scales.
    """

    kind: str
    fmt: str = "e4m3"
    bits: int = 8
    group: int = 32
    residual: int = 32
    scales: tuple[tuple[float, float], ...] | None = None
    key_axis: str = "channel"
    value_axis: str = "token"

    def __post_init__(self) -> None:
        if self.kind not in ("fp8", "int8", "kivi"):
            raise ValueError(f"Unknown KV quantization {self.kind!r}; use 'fp8', 'int8' or 'kivi'.")
        if self.kind == "fp8" and self.fmt not in FP8_DTYPES:
            raise ValueError(f"FP8 format must be 'e4m3' or 'e5m2', got {self.fmt!r}.")
        if self.kind == "kivi":
            if self.bits not in (2, 4):
                raise ValueError(f"KIVI stores 2 or 4 bits, got {self.bits}.")
            if self.group < 1 or self.residual < 0:
                raise ValueError("KIVI needs group >= 1 and residual >= 0.")
            if {self.key_axis, self.value_axis} - {"channel", "token"}:
                raise ValueError("key_axis and value_axis must each be 'channel' or 'token'.")

    @property
    def label(self) -> str:
        if self.kind == "fp8":
            return f"FP8 {self.fmt.upper()}" + ("" if self.scales else " (scale 1)")
        if self.kind == "int8":
            return "INT8 per token"
        name = f"KIVI {self.bits}-bit"
        if (self.key_axis, self.value_axis) != ("channel", "token"):
            name += f" (K per {self.key_axis}, V per {self.value_axis})"
        return name + ("" if self.residual else ", no fp window")

    def scale(self, layer: int, which: int) -> float:
        if self.scales is None:
            return 1.0
        if layer >= len(self.scales):
            raise ValueError(f"The FP8 scheme has scales for {len(self.scales)} layers but layer {layer} asked for one; "
                             "calibrate with fp8_scales() on the same model.")
        return self.scales[layer][which]

    # ------------------------------------------------------------------ accounting
    def quantized_tokens(self, n_tokens: int) -> int:
        """How many of the first tokens are stored quantized once `n_tokens` are cached.

        FP8/INT8: all. KIVI: whole groups of G, leaving the newest R to R+G-1 in full precision.
        """
        if self.kind != "kivi":
            return n_tokens
        return max(0, (n_tokens - self.residual) // self.group) * self.group

    def cache_bytes(self, n_tokens: int, *, n_layers: int, n_kv_heads: int, head_dim: int, batch: int = 1,
                    full_bytes: int = 2) -> int:
        """Exact bytes of the cache for `n_tokens` per sequence (full_bytes: the unquantized dtype's size)."""
        if self.kind == "kivi" and head_dim % self.group:
            raise ValueError(f"KIVI's value groups of {self.group} channels must divide head_dim={head_dim}.")
        rows = batch * n_kv_heads  # one (T, d) matrix per sequence and head, for K and again for V
        if self.kind == "fp8":
            per_layer = 2 * rows * n_tokens * head_dim + 2 * 4  # codes + two float32 scales
        elif self.kind == "int8":
            per_layer = 2 * rows * n_tokens * (head_dim + SCALE_DTYPE.itemsize)
        else:
            tq = self.quantized_tokens(n_tokens)
            codes = 2 * rows * tq * head_dim * self.bits // 8
            s = 2 * SCALE_DTYPE.itemsize  # scale + zero point
            groups = {"channel": (tq // self.group) * head_dim, "token": tq * (head_dim // self.group)}
            scales = rows * (groups[self.key_axis] + groups[self.value_axis]) * s
            per_layer = codes + scales + 2 * rows * (n_tokens - tq) * head_dim * full_bytes
        return n_layers * per_layer


# ----------------------------------------------------------------------------- the quantizers
def fp8_quantize(x: torch.Tensor, fmt: str, scale: float) -> torch.Tensor:
    """x / scale rounded to the nearest FP8 value, saturating at ±max (the cast alone would give NaN for e4m3)."""
    m = FP8_MAX[fmt]
    return (x.float() / scale).clamp(-m, m).to(FP8_DTYPES[fmt])


def fp8_dequantize(codes: torch.Tensor, scale: float, dtype) -> torch.Tensor:
    return (codes.float() * scale).to(dtype)


def int8_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per (token, head): s = max|x| / 127 over the head_dim channels."""
    s = (x.float().abs().amax(-1, keepdim=True) / 127).clamp(min=1e-8).to(SCALE_DTYPE)
    return torch.round(x.float() / s.float()).clamp(-127, 127).to(torch.int8), s


def int8_dequantize(codes: torch.Tensor, s: torch.Tensor, dtype) -> torch.Tensor:
    return (codes.float() * s.float()).to(dtype)


def _asym(x: torch.Tensor, bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min/max quantization along `dim`: codes in [0, 2^b - 1], scale and zero (= min) in fp16."""
    lo, hi = x.float().amin(dim, keepdim=True), x.float().amax(dim, keepdim=True)
    s = ((hi - lo) / (2**bits - 1)).clamp(min=1e-8).to(SCALE_DTYPE)
    z = lo.to(SCALE_DTYPE)
    codes = torch.round((x.float() - z.float()) / s.float()).clamp(0, 2**bits - 1).to(torch.uint8)
    return codes, s, z


def quantize_grouped(x: torch.Tensor, bits: int, group: int, axis: str):
    """Asymmetric b-bit codes for x (B, H, T, d) with one scale per group.

    axis="channel": a scale per channel over each group of `group` tokens (KIVI's keys; T must be a
    multiple of the group). axis="token": a scale per token over each group of `group` channels
    (KIVI's values). Returns codes (B, H, T, d) and scale, zero in fp16.
    """
    b, h, t, d = x.shape
    if axis == "channel":
        codes, s, z = _asym(x.reshape(b, h, t // group, group, d), bits, dim=3)
    elif axis == "token":
        codes, s, z = _asym(x.reshape(b, h, t, d // group, group), bits, dim=4)
    else:
        raise ValueError(f"axis must be 'channel' or 'token', got {axis!r}.")
    return codes.reshape(b, h, t, d), s, z


def dequantize_grouped(codes: torch.Tensor, s: torch.Tensor, z: torch.Tensor, group: int, axis: str,
                       dtype) -> torch.Tensor:
    b, h, t, d = codes.shape
    shape = (b, h, t // group, group, d) if axis == "channel" else (b, h, t, d // group, group)
    return (codes.reshape(shape).float() * s.float() + z.float()).reshape(b, h, t, d).to(dtype)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (< 2^bits) along the last dim into uint8: 8/bits codes per byte, low bits first."""
    per = 8 // bits
    c = codes.to(torch.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    out = torch.zeros(c.shape[:-1], dtype=torch.uint8, device=codes.device)
    for i in range(per):
        out |= c[..., i] << (bits * i)
    return out


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    per, mask = 8 // bits, (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(per)]
    return torch.stack(parts, dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * per)


def fake_quantize(scheme: KVQuant, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantized keys and values as the cache would return them for the quantized tokens.

    For KIVI only the first whole groups of tokens are quantized; the rest are returned unchanged
    (``simulate`` decides per query which version each key is seen in).
    """
    if scheme.kind == "fp8":
        return (fp8_dequantize(fp8_quantize(k, scheme.fmt, scheme.scale(layer, 0)), scheme.scale(layer, 0), k.dtype),
                fp8_dequantize(fp8_quantize(v, scheme.fmt, scheme.scale(layer, 1)), scheme.scale(layer, 1), v.dtype))
    if scheme.kind == "int8":
        return int8_dequantize(*int8_quantize(k), k.dtype), int8_dequantize(*int8_quantize(v), v.dtype)
    g, t = scheme.group, k.shape[2]
    whole = t // g * g
    kh, vh = k.clone(), v.clone()
    if whole:
        ka, va = scheme.key_axis, scheme.value_axis
        kh[:, :, :whole] = dequantize_grouped(*quantize_grouped(k[:, :, :whole], scheme.bits, g, ka), g, ka, k.dtype)
        vh[:, :, :whole] = dequantize_grouped(*quantize_grouped(v[:, :, :whole], scheme.bits, g, va), g, va, v.dtype)
    return kh, vh


# ----------------------------------------------------------------------------- a real quantized cache
class QuantizedCache:
    """A cache that stores codes and scales; ``update`` returns the dequantized keys and values."""

    def __init__(self, scheme: KVQuant, n_layers: int):
        self.scheme, self.n_layers = scheme, n_layers
        self.store: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]
        self.lengths = [0] * n_layers

    def seq_len(self, layer: int = 0) -> int:
        return self.lengths[layer]

    @staticmethod
    def _cat(store: dict, name: str, t: torch.Tensor, dim: int) -> None:
        store[name] = t if name not in store else torch.cat([store[name], t], dim=dim)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sc, st = self.scheme, self.store[layer]
        self.lengths[layer] += k.shape[2]
        if sc.kind == "fp8":
            ks, vs = sc.scale(layer, 0), sc.scale(layer, 1)
            st.setdefault("scales", torch.tensor([ks, vs], dtype=torch.float32, device=k.device))
            self._cat(st, "k", fp8_quantize(k, sc.fmt, ks), 2)
            self._cat(st, "v", fp8_quantize(v, sc.fmt, vs), 2)
            return fp8_dequantize(st["k"], ks, k.dtype), fp8_dequantize(st["v"], vs, v.dtype)
        if sc.kind == "int8":
            for name, x in (("k", k), ("v", v)):
                codes, s = int8_quantize(x)
                self._cat(st, name, codes, 2)
                self._cat(st, name + "_s", s, 2)
            return int8_dequantize(st["k"], st["k_s"], k.dtype), int8_dequantize(st["v"], st["v_s"], v.dtype)
        return self._update_kivi(st, k, v)

    def _update_kivi(self, st: dict, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sc, g = self.scheme, self.scheme.group
        self._cat(st, "k_tail", k, 2)
        self._cat(st, "v_tail", v, 2)
        n_q = st.get("n_q", 0)
        target = sc.quantized_tokens(n_q + st["k_tail"].shape[2])
        if target > n_q:  # whole groups have left the full-precision window: quantize them
            m = target - n_q
            kc, ks, kz = quantize_grouped(st["k_tail"][:, :, :m], sc.bits, g, sc.key_axis)
            vc, vs, vz = quantize_grouped(st["v_tail"][:, :, :m], sc.bits, g, sc.value_axis)
            for name, t, dim in (("kq", pack_bits(kc, sc.bits), 2), ("ks", ks, 2), ("kz", kz, 2),
                                 ("vq", pack_bits(vc, sc.bits), 2), ("vs", vs, 2), ("vz", vz, 2)):
                self._cat(st, name, t, dim)
            st["k_tail"], st["v_tail"] = st["k_tail"][:, :, m:], st["v_tail"][:, :, m:]
            st["n_q"] = target
        if not st.get("n_q"):
            return st["k_tail"], st["v_tail"]
        kd = dequantize_grouped(unpack_bits(st["kq"], sc.bits), st["ks"], st["kz"], g, sc.key_axis, k.dtype)
        vd = dequantize_grouped(unpack_bits(st["vq"], sc.bits), st["vs"], st["vz"], g, sc.value_axis, v.dtype)
        return torch.cat([kd, st["k_tail"]], dim=2), torch.cat([vd, st["v_tail"]], dim=2)

    def nbytes(self) -> int:
        """Bytes of every tensor the cache holds (codes, scales, the full-precision tail)."""
        return sum(t.numel() * t.element_size() for st in self.store for t in st.values()
                   if isinstance(t, torch.Tensor))


# ----------------------------------------------------------------------------- one-pass simulation
def quantized_mask(scheme: KVQuant, q_len: int, k_len: int, device=None) -> torch.Tensor:
    """Bool (q_len, k_len): True where query i sees key j in its quantized form.

    Query i is the token at position k_len - q_len + i; when it was decoded the cache held
    p + 1 tokens, of which the first ``scheme.quantized_tokens(p + 1)`` were quantized.
    """
    pos = torch.arange(k_len - q_len, k_len, device=device)
    if scheme.kind == "kivi":
        n_q = ((pos + 1 - scheme.residual).clamp(min=0) // scheme.group) * scheme.group
    else:
        n_q = pos + 1
    return torch.arange(k_len, device=device)[None, :] < n_q[:, None]


def simulate(scheme: KVQuant):
    """A ``kv_hook`` for CourseDecoder: attention as a token-by-token decode with this cache computes it."""

    def hook(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask) -> torch.Tensor:
        kh, vh = fake_quantize(scheme, layer, k, v)
        n_heads, q_len, k_len = q.shape[1], q.shape[2], k.shape[2]
        use_q = quantized_mask(scheme, q_len, k_len, q.device)[None, None]
        scale = q.shape[-1] ** -0.5
        s_full = (q @ repeat_kv(k, n_heads).transpose(-2, -1)).float() * scale
        s_quant = (q @ repeat_kv(kh, n_heads).transpose(-2, -1)).float() * scale
        p = masked_softmax(torch.where(use_q, s_quant, s_full), key_mask).to(v.dtype)
        return (p * use_q) @ repeat_kv(vh, n_heads) + (p * ~use_q) @ repeat_kv(v, n_heads)

    return hook


# ----------------------------------------------------------------------------- calibration and statistics
@torch.no_grad()
def capture_kv(decoder, input_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The post-RoPE keys and values (B, H_kv, T, d) that every layer would cache for `input_ids`."""
    from .attention import attend

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(layer, q, k, v, key_mask):
        seen.append((k.detach(), v.detach()))
        return attend(q, k, v, key_mask=key_mask)

    decoder(input_ids, kv_hook=hook)
    return seen


def fp8_scales(decoder, input_ids: torch.Tensor, fmt: str = "e4m3") -> tuple[tuple[float, float], ...]:
    """Static per-layer scales max|x| / FP8_MAX from a calibration batch (what llm-compressor's kv_cache_scheme stores)."""
    return tuple((k.abs().max().item() / FP8_MAX[fmt], v.abs().max().item() / FP8_MAX[fmt])
                 for k, v in capture_kv(decoder, input_ids))


def channel_outliers(x: torch.Tensor) -> dict[str, float]:
    """How channel-structured a (B, H, T, d) tensor is: max over channels of mean|x| / its median, and
    the same along tokens (max token over the median token)."""
    per_channel = x.float().abs().mean(dim=(0, 2))  # (H, d)
    per_token = x.float().abs().mean(dim=(0, 3))    # (H, T)
    return {"channel max/median": (per_channel.amax(-1) / per_channel.median(-1).values).max().item(),
            "token max/median": (per_token.amax(-1) / per_token.median(-1).values).max().item()}
