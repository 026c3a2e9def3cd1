"""Chapter 00's hardware measurements: where a linear layer sits on the roofline, prefill against decode.

    python -m course_lib.bench roofline [--name h200_roofline]
    python -m course_lib.bench prefill-decode [--name h200_prefill_decode]

Timing follows the usual GPU rules: warm-up first, CUDA events around many repetitions, the
median reported, and enough distinct weight matrices in rotation that the L2 cache cannot hold
them, so the numbers reflect HBM and not the cache.
"""

from __future__ import annotations

import statistics

from ..core.env import require_cuda
from ..core.results import save_result
from ..core.timing import copy_bandwidth_gbps, device_slug, device_timer, matmul_tflops, median_time
from .roofline import linear_bytes, linear_flops

LLAMA7B_MLP = (4096, 11008)  # (k, n) of Llama-2-7B's gate/up projection
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def linear_roofline(
    device,
    *,
    k: int = LLAMA7B_MLP[0],
    n: int = LLAMA7B_MLP[1],
    tokens: tuple[int, ...] = TOKENS,
    dtype=None,
    n_weights: int = 4,
    reps: int = 30,
) -> list[dict]:
    """Time y = x Wᵀ for W of shape (n, k) and m = tokens rows: decode (m=1) up to prefill (m large)."""
    import torch

    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    elt = torch.tensor([], dtype=dtype).element_size()
    gen = torch.Generator(device="cpu").manual_seed(0)
    weights = [(torch.randn(n, k, generator=gen) / k**0.5).to(device, dtype) for _ in range(n_weights)]
    rows = []
    for m in tokens:
        x = torch.randn(m, k, generator=gen).to(device, dtype)
        state = {"i": 0}

        def call() -> None:
            state["i"] = (state["i"] + 1) % n_weights  # rotate: no weight is still in L2
            torch.nn.functional.linear(x, weights[state["i"]])

        seconds = median_time(call, device, reps=reps, inner=n_weights)
        flops, nbytes = linear_flops(m, k, n), linear_bytes(m, k, n, elt)
        rows.append({
            "tokens": m,
            "time_us": seconds * 1e6,
            "us_per_token": seconds * 1e6 / m,
            "tflops": flops / seconds / 1e12,
            "gbps": nbytes / seconds / 1e9,
            "intensity": flops / nbytes,
        })
    return rows


def prefill_decode_times(model, *, prompt_tokens: int = 256, new_tokens: int = 64, reps: int = 5,
                         seed: int = 0) -> dict:
    """Time one prefill of `prompt_tokens` and `new_tokens` single-token decode steps with the KV cache.

    Returns per-token costs: prefill processes the whole prompt in one forward pass; each decode
    step is a forward pass over one token that reads the cache and every weight.
    """
    import torch

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, vocab, (1, prompt_tokens), generator=gen).to(device)
    steps = torch.randint(1, vocab, (new_tokens, 1, 1), generator=gen).to(device)
    timer = device_timer(device)
    state = {}

    def prefill() -> None:
        state["past"] = model(input_ids=prompt, use_cache=True).past_key_values

    def decode() -> None:
        past = state["past"]
        for tok in steps:
            past = model(input_ids=tok, past_key_values=past, use_cache=True).past_key_values

    prefill_s, decode_s = [], []
    with torch.no_grad():
        for i in range(reps + 1):
            p, d = timer(prefill), timer(decode)
            if i:  # the first round warms up
                prefill_s.append(p)
                decode_s.append(d)
    prefill_t, decode_t = statistics.median(prefill_s), statistics.median(decode_s) / new_tokens
    return {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "prefill_ms": prefill_t * 1e3, "prefill_us_per_token": prefill_t * 1e6 / prompt_tokens,
            "decode_us_per_token": decode_t * 1e6, "decode_vs_prefill_per_token": decode_t / (prefill_t / prompt_tokens)}


def record_prefill_decode(name: str | None = None) -> None:
    import torch

    from ..lm.models import load_model

    require_cuda("The prefill/decode benchmark")
    name = name or f"{device_slug()}_prefill_decode"
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        model, _ = load_model(device="cuda", dtype=dtype)
        for prompt in (64, 256):
            rows.append({"dtype": str(dtype).replace("torch.", ""), **prefill_decode_times(model, prompt_tokens=prompt)})
    path = save_result(name, rows, description="bundled course model: one prefill, then 64 decode steps with the "
                       "KV cache, batch 1, median of 5", command=f"python -m course_lib.bench prefill-decode --name {name}")
    print(f"wrote {path}")
    for row in rows:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})


def record_roofline(name: str | None = None) -> None:
    import torch

    require_cuda("The roofline benchmark")
    name = name or f"{device_slug()}_roofline"
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    bandwidth = copy_bandwidth_gbps(device)
    peak = matmul_tflops(device)
    rows = linear_roofline(device)
    path = save_result(
        name,
        rows,
        description=(
            f"fp16 y = x·Wᵀ, W {LLAMA7B_MLP[1]}x{LLAMA7B_MLP[0]} (Llama-2-7B gate/up), 4 weights in rotation, "
            "median of 30 CUDA-event samples"
        ),
        command=f"python -m course_lib.bench roofline --name {name}",
        summary={"copy_gbps": bandwidth, "matmul_fp16_tflops": peak, "matmul_size": 8192},
    )
    print(f"wrote {path}: copy {bandwidth:.0f} GB/s, fp16 matmul {peak:.0f} TFLOP/s")
    for row in rows:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
