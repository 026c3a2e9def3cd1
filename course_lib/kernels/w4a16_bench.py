"""The fused W4A16 kernel against fp16 cuBLAS on one Llama-3-8B decode step, recorded on a GPU.

    python -m course_lib.bench w4a16 [--name h200_w4a16] [--quick]

What it measures (every timing is a CUDA graph replayed many times, the median of CUDA-event samples,
so that launch overhead does not hide the bandwidth):

* ``step``: the 224 linear layers of one decode step (q, k, v, o, gate, up, down of 32 layers; 14 GB of
  fp16 weights, far beyond the 60 MB L2) at batch 1-16: fp16 cuBLAS, the course kernels (simple and
  tuned), plain PyTorch's de-quantize-then-matmul, and PyTorch's own int4 kernel (tinygemm, bf16) where
  it runs. Each with its share of the measured copy bandwidth and the ideal speedup from bytes.
* ``per_linear``: the same per kind of layer (32 distinct matrices each), batch 1 and 16.
* ``ladder``: the speed tricks added one at a time (batch 1 and 16), and the packing layout.
* ``fused``: the step again with q/k/v and gate/up each stored as one matrix (both fp16 and 4-bit), as
  serving engines do: fewer, larger matrices, less fixed cost per call.
* ``prefill``: one gate projection from 1 to 4096 tokens: fused kernel, de-quantize once + cuBLAS, fp16.
* ``end_to_end``: tokens per second of an 8B-shaped Llama (random weights, batch 1, CUDA graph) in fp16
  and with every linear layer on the course kernel.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
from torch.nn import functional as F

from ..core.env import require_cuda
from ..core.results import save_result
from ..core.timing import copy_bandwidth_gbps, cuda_graph_ms, device_slug
from . import w4a16 as W
from .dequant_bench import LLAMA3_8B_LINEARS, lean_dequant_matmul

GROUP = 128
LAYERS = 32
# The same step with q/k/v in one matrix and gate/up in one, as serving engines store them (both sides)
LLAMA3_8B_FUSED = (("qkv_proj", 4096, 6144), ("o_proj", 4096, 4096), ("gate_up_proj", 4096, 28672),
                   ("down_proj", 14336, 4096))
BATCHES = (1, 2, 4, 8, 16)


def random_packed_cuda(k: int, n: int, group_size: int = GROUP, seed: int = 0):
    """Random GPTQ-packed tensors made on the GPU (fast at 8B scale): any code, zero point 8, scales ~1/sqrt(k)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    qweight = torch.randint(-2**31, 2**31 - 1, (k // 8, n), generator=gen, device="cuda", dtype=torch.int32)
    groups = k // group_size
    qzeros = torch.full((groups, n // 8), 0x77777777, dtype=torch.int32, device="cuda")  # z = 8, stored minus one
    scales = ((torch.rand(groups, n, generator=gen, device="cuda") * 0.5 + 0.5) / (4 * math.sqrt(k))).half()
    return qweight, scales, qzeros


def graph_ms(fn, *, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of one replay of a CUDA graph that records fn() once (core.timing.cuda_graph_ms)."""
    return cuda_graph_ms(fn, reps=reps, warmup=warmup)


class StepWeights:
    """Every linear layer of the decode step, in fp16 and 4-bit, built on the GPU."""

    def __init__(self, linears=LLAMA3_8B_LINEARS, layers: int = LAYERS, dtype=torch.float16):
        self.linears, self.layers, self.dtype = linears, layers, dtype
        self.dense, self.packed = {}, {}
        for idx, (name, k, n) in enumerate(linears):
            gen = torch.Generator(device="cuda").manual_seed(idx)
            self.dense[name] = [(torch.randn(n, k, generator=gen, device="cuda", dtype=dtype) / math.sqrt(k))
                                for _ in range(layers)]
            self.packed[name] = [random_packed_cuda(k, n, seed=1000 * idx + i) for i in range(layers)]

    def fp16_bytes(self, m: int) -> int:
        return sum(self.layers * (k * n * 2 + m * (k + n) * 2) for _, k, n in self.linears)

    def int4_bytes(self, m: int) -> int:
        """Codes, fp16 scales and packed zeros, plus activations in and out."""
        return sum(self.layers * (k * n // 2 + (k // GROUP) * n * 2 + (k // GROUP) * n // 2 + m * (k + n) * 2)
                   for _, k, n in self.linears)

    def inputs(self, m: int) -> dict[int, torch.Tensor]:
        gen = torch.Generator(device="cuda").manual_seed(m)
        return {k: torch.randn(m, k, generator=gen, device="cuda", dtype=self.dtype)
                for k in {k for _, k, _ in self.linears}}


def _step_fn(sw: StepWeights, xs: dict, method: str, kinds=None, config_for=None):
    """A function running the chosen linears of every layer with one method."""
    kinds = kinds or [name for name, _, _ in sw.linears]
    shape = {name: (k, n) for name, k, n in sw.linears}

    if method == "fp16":
        def run():
            for name in kinds:
                x = xs[shape[name][0]]
                for w in sw.dense[name]:
                    F.linear(x, w)
    elif method == "lean torch":
        zeros = {name: [W.unpack_zeros(qz).half() for _, _, qz in sw.packed[name]] for name in kinds}

        def run():
            for name in kinds:
                x = xs[shape[name][0]]
                for (qw, s, _), z in zip(sw.packed[name], zeros[name]):
                    lean_dequant_matmul(x, qw, s, z, GROUP)
    elif method == "simple":
        def run():
            for name in kinds:
                x = xs[shape[name][0]]
                for qw, s, qz in sw.packed[name]:
                    W.w4a16_simple(x, qw, s, qz, GROUP, block_n=64)
    else:  # the fast kernel with config_for(m, n, k)
        def run():
            for name in kinds:
                k, n = shape[name]
                x = xs[k]
                cfg = config_for(x.shape[0], n, k)
                for qw, s, qz in sw.packed[name]:
                    W.launch(x, qw, s, qz, GROUP, cfg)
    return run


def tune_all(sw: StepWeights, batches=BATCHES, verbose: bool = True) -> None:
    for m in batches:
        xs = sw.inputs(m)
        for name, k, n in sw.linears:
            t0 = time.perf_counter()
            qw, s, qz = sw.packed[name][0]
            cfg = W.tune(xs[k], qw, s, qz, GROUP)
            if verbose:
                print(f"  tuned m={m} {name}: {cfg} ({time.perf_counter() - t0:.1f} s)", flush=True)


def tuned_for(m: int, n: int, k: int, dtype=torch.float16) -> W.KernelConfig:
    return W._TUNED.get(W.tune_key(m, n, k, GROUP, dtype)) or W.default_config(m, n, k, GROUP)


def tinygemm_fn(sw: StepWeights, xs_bf16: dict):
    """PyTorch's own int4 kernel (torch.ops.aten._weight_int4pack_mm, "tinygemm", bf16 activations), or None."""
    try:
        packed = {}
        for name, k, n in sw.linears:
            packed[name] = []
            for i in range(sw.layers):
                u = torch.randint(0, 16, (n, k // 2), dtype=torch.uint8, device="cuda")
                wp = torch.ops.aten._convert_weight_to_int4pack(u, 8)
                sz = torch.rand(k // GROUP, n, 2, device="cuda", dtype=torch.bfloat16)
                packed[name].append((wp, sz))
        shape = {name: (k, n) for name, k, n in sw.linears}

        def run():
            for name, items in packed.items():
                x = xs_bf16[shape[name][0]]
                for wp, sz in items:
                    torch.ops.aten._weight_int4pack_mm(x, wp, GROUP, sz)
        run()
        return run
    except Exception as exc:  # not built for this GPU/torch: say so in the record
        print(f"  tinygemm unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", flush=True)
        return None


def step_rows(sw: StepWeights, bandwidth: float, batches=BATCHES, reps: int = 20, layout: str = "separate",
              extras: bool = True) -> list[dict]:
    rows = []
    for m in batches:
        xs = sw.inputs(m)
        fp16_bytes, int4_bytes = sw.fp16_bytes(m), sw.int4_bytes(m)
        times = {"fp16 cuBLAS": graph_ms(_step_fn(sw, xs, "fp16"), reps=reps),
                 "course fused (tuned)": graph_ms(_step_fn(sw, xs, "fast", config_for=tuned_for), reps=reps)}
        if extras and m in (1, 16):
            times["course simple"] = graph_ms(_step_fn(sw, xs, "simple"), reps=reps)
            times["dequant + cuBLAS (torch)"] = graph_ms(_step_fn(sw, xs, "lean torch"), reps=max(5, reps // 2))
        for method, ms in times.items():
            nbytes = fp16_bytes if method == "fp16 cuBLAS" else int4_bytes
            rows.append({"batch": m, "dtype": "float16", "projections": layout, "method": method, "ms": ms,
                         "speedup_vs_fp16": times["fp16 cuBLAS"] / ms,
                         "gbps": nbytes / ms / 1e6, "share_of_copy_bw": nbytes / ms / 1e6 / bandwidth,
                         "ideal_speedup_from_bytes": fp16_bytes / int4_bytes})
            print(f"  step ({layout}) batch {m} {method}: {ms:.3f} ms ({rows[-1]['speedup_vs_fp16']:.2f}x, "
                  f"{rows[-1]['share_of_copy_bw']:.0%} of copy bw)", flush=True)
    return rows


def bf16_rows(sw_bf16: StepWeights, bandwidth: float, batches=(1, 16), reps: int = 20) -> list[dict]:
    """bf16 activations: cuBLAS bf16, the course kernel and PyTorch's tinygemm int4 kernel."""
    rows = []
    for m in batches:
        xs = sw_bf16.inputs(m)
        times = {"bf16 cuBLAS": graph_ms(_step_fn(sw_bf16, xs, "fp16"), reps=reps)}
        for mm in (m,):
            for name, k, n in sw_bf16.linears:
                qw, s, qz = sw_bf16.packed[name][0]
                W.tune(xs[k], qw, s, qz, GROUP)
        times["course fused (tuned)"] = graph_ms(
            _step_fn(sw_bf16, xs, "fast", config_for=lambda mm, n, k: tuned_for(mm, n, k, torch.bfloat16)), reps=reps)
        tiny = tinygemm_fn(sw_bf16, xs)
        if tiny is not None:
            times["torch int4 (tinygemm)"] = graph_ms(tiny, reps=reps)
        for method, ms in times.items():
            nbytes = sw_bf16.fp16_bytes(m) if method == "bf16 cuBLAS" else sw_bf16.int4_bytes(m)
            rows.append({"batch": m, "dtype": "bfloat16", "method": method, "ms": ms,
                         "speedup_vs_fp16": times["bf16 cuBLAS"] / ms, "gbps": nbytes / ms / 1e6,
                         "share_of_copy_bw": nbytes / ms / 1e6 / bandwidth,
                         "ideal_speedup_from_bytes": sw_bf16.fp16_bytes(m) / sw_bf16.int4_bytes(m)})
            print(f"  bf16 step batch {m} {method}: {ms:.3f} ms ({rows[-1]['speedup_vs_fp16']:.2f}x)", flush=True)
    return rows


def per_linear_rows(sw: StepWeights, batches=(1, 16), reps: int = 20) -> list[dict]:
    rows = []
    for m in batches:
        xs = sw.inputs(m)
        for name, k, n in sw.linears:
            fp16 = graph_ms(_step_fn(sw, xs, "fp16", kinds=[name]), reps=reps) / sw.layers
            fused = graph_ms(_step_fn(sw, xs, "fast", kinds=[name], config_for=tuned_for), reps=reps) / sw.layers
            rows.append({"batch": m, "linear": name, "k": k, "n": n, "fp16_us": fp16 * 1e3, "fused_us": fused * 1e3,
                         "speedup": fp16 / fused, "config": tuned_for(m, n, k).as_dict()})
            print(f"  {name} batch {m}: fp16 {fp16 * 1e3:.1f} us, fused {fused * 1e3:.1f} us ({fp16 / fused:.2f}x)",
                  flush=True)
    return rows


LADDER = (
    ("simple kernel (one group per step, no split)", None),
    ("fast loop, no tricks", dict(split=False, magic=False, fold=False, half=False, hints=False)),
    ("+ split-K", dict(split=True, magic=False, fold=False, half=False, hints=False)),
    ("+ magic-number int4->float", dict(split=True, magic=True, fold=False, half=False, hints=False)),
    ("+ scale and zero folded out of the loop", dict(split=True, magic=True, fold=True, half=False, hints=False)),
    ("+ fp16 products within a step (one token)", dict(split=True, magic=True, fold=True, half=True, hints=False)),
    ("+ contiguity and evict-first hints", dict(split=True, magic=True, fold=True, half=True, hints=True)),
    ("+ half2 conversion and products in inline PTX (1-4 tokens)",
     dict(split=True, magic=True, fold=True, half=True, hints=True, h2=True)),
    ("+ autotuned tiles, warps, split", "tuned"),
)


def ladder_rows(sw: StepWeights, batches=(1, 16), reps: int = 20) -> list[dict]:
    """The step's time as the tricks are switched on one after another, and the packing layout."""
    rows = []
    for m in batches:
        xs = sw.inputs(m)
        fp16 = graph_ms(_step_fn(sw, xs, "fp16"), reps=reps)
        for label, flags in LADDER:
            if flags is None:
                ms = graph_ms(_step_fn(sw, xs, "simple"), reps=reps)
            elif flags == "tuned":
                ms = graph_ms(_step_fn(sw, xs, "fast", config_for=tuned_for), reps=reps)
            else:
                def config_for(mm, n, k, flags=flags):
                    base = W.default_config(mm, n, k, GROUP)
                    return replace(base, split_k=base.split_k if flags["split"] else 1, magic=flags["magic"],
                                   fold=flags["fold"], half=flags["half"], evict=flags["hints"], hints=flags["hints"],
                                   h2=flags.get("h2", False))
                ms = graph_ms(_step_fn(sw, xs, "fast", config_for=config_for), reps=reps)
            rows.append({"batch": m, "step": label, "ms": ms, "speedup_vs_fp16": fp16 / ms})
            print(f"  ladder batch {m} {label}: {ms:.3f} ms ({fp16 / ms:.2f}x)", flush=True)
        # the packing layout: the same tuned kernel reading words stored (n, k/8) instead of GPTQ's (k/8, n)
        saved = sw.packed
        sw.packed = {name: [(qw.t().contiguous().t(), s, qz) for qw, s, qz in items] for name, items in saved.items()}
        ms = graph_ms(_step_fn(sw, xs, "fast", config_for=tuned_for), reps=reps)
        sw.packed = saved
        rows.append({"batch": m, "step": "layout: words stored (n, k/8), K contiguous", "ms": ms,
                     "speedup_vs_fp16": fp16 / ms})
        print(f"  ladder batch {m} layout nk: {ms:.3f} ms ({fp16 / ms:.2f}x)", flush=True)
    return rows


def prefill_rows(tokens=(1, 4, 16, 32, 64, 128, 256, 512, 1024, 4096), reps: int = 20) -> list[dict]:
    """One gate projection (4096 -> 14336) from decode to prefill: where the fused kernel stops paying."""
    k, n = 4096, 14336
    copies = 8  # 8 x 29 MB of packed weights, 8 x 117 MB fp16: beyond the L2
    dense = [torch.randn(n, k, device="cuda", dtype=torch.float16) / 64 for _ in range(copies)]
    packed = [random_packed_cuda(k, n, seed=i) for i in range(copies)]
    rows = []
    for m in tokens:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        qw, s, qz = packed[0]
        cfg = W.tune(x, qw, s, qz, GROUP) if m <= W.TUNE_MAX_TOKENS else W.default_config(m, n, k, GROUP)
        if m > W.TUNE_MAX_TOKENS:
            cfg = replace(cfg, dot=True)
        t_fp16 = graph_ms(lambda: [F.linear(x, w) for w in dense], reps=reps) / copies
        t_fused = graph_ms(lambda: [W.launch(x, q, sc, z, GROUP, cfg) for q, sc, z in packed], reps=reps) / copies
        t_deq = graph_ms(lambda: [x @ W.dequantize(q, sc, z, GROUP) for q, sc, z in packed], reps=max(5, reps // 2)) / copies
        rows.append({"tokens": m, "fp16_us": t_fp16 * 1e3, "fused_us": t_fused * 1e3, "dequant_cublas_us": t_deq * 1e3,
                     "fused_vs_fp16": t_fp16 / t_fused, "dequant_vs_fp16": t_fp16 / t_deq,
                     "faster_4bit_path": "fused" if t_fused < t_deq else "dequant + cuBLAS"})
        print(f"  prefill {m} tokens: fp16 {t_fp16 * 1e3:.1f} us, fused {t_fused * 1e3:.1f} us, "
              f"dequant+cuBLAS {t_deq * 1e3:.1f} us", flush=True)
    return rows


def end_to_end_rows(context: int = 512, reps: int = 30) -> list[dict]:
    """Tokens per second of a Llama-3-8B-shaped model (random weights), batch 1, one CUDA graph per step."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ..kv.bench import step_function, time_step
    from ..kv.decoder import CourseDecoder
    from ..kv.sizes import load_config

    cfg = {k: v for k, v in load_config("Meta-Llama-3-8B").items() if not k.startswith("_")}
    cfg.pop("torch_dtype", None)
    config = LlamaConfig(**cfg)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16).eval()
    dec = CourseDecoder.from_hf(model)
    step = step_function(dec, "cache", 1, context)
    fp16 = time_step(step, torch.device("cuda"), graph=True, budget_s=2.0, min_reps=reps)
    linear_bytes = sum(p.numel() * 2 for n_, p in model.named_parameters() if n_.endswith("proj.weight"))
    head_bytes = model.lm_head.weight.numel() * 2
    int4_linear_bytes = 0
    for layer in model.model.layers:  # swap every projection for the 4-bit layer (random codes: timing only)
        for parent in (layer.self_attn, layer.mlp):
            for attr in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
                lin = getattr(parent, attr, None)
                if lin is None:
                    continue
                n, k = lin.weight.shape
                qw, s, qz = random_packed_cuda(k, n, seed=k + n)
                int4_linear_bytes += qw.numel() * 4 + s.numel() * 2 + qz.numel() * 4
                setattr(parent, attr, W.W4A16Linear(qw, s, qz, GROUP))
    torch.cuda.empty_cache()
    dec = CourseDecoder.from_hf(model)
    step = step_function(dec, "cache", 1, context)
    step()  # tunes each new shape before the graph is recorded
    w4 = time_step(step, torch.device("cuda"), graph=True, budget_s=2.0, min_reps=reps)
    ideal = (linear_bytes + head_bytes) / (int4_linear_bytes + head_bytes)
    rows = [{"model": "Llama-3-8B shapes, random weights", "weights": "fp16", "context": context,
             "ms_per_token": fp16["ms"], "tokens_per_s": 1e3 / fp16["ms"], "speedup": 1.0,
             "ideal_speedup_from_bytes": 1.0},
            {"model": "Llama-3-8B shapes, random weights", "weights": "W4 g128 (course kernel), fp16 lm_head",
             "context": context, "ms_per_token": w4["ms"], "tokens_per_s": 1e3 / w4["ms"],
             "speedup": fp16["ms"] / w4["ms"], "ideal_speedup_from_bytes": ideal}]
    for r in rows:
        print(f"  end to end {r['weights']}: {r['ms_per_token']:.2f} ms/token, {r['tokens_per_s']:.0f} tok/s "
              f"({r['speedup']:.2f}x; bytes allow {r['ideal_speedup_from_bytes']:.2f}x)", flush=True)
    del model, dec
    torch.cuda.empty_cache()
    return rows


def record_w4a16(name: str | None = None, quick: bool = False, parts: tuple[str, ...] = ()) -> dict:
    """Run every part (or `parts`) and save data/results/<gpu>_w4a16.json."""
    require_cuda("The W4A16 kernel benchmark")
    torch.backends.cuda.matmul.allow_tf32 = False
    name = name or f"{device_slug()}_w4a16"
    parts = parts or ("step", "per_linear", "ladder", "fused", "bf16", "prefill", "end_to_end")
    reps = 10 if quick else 30
    t0 = time.perf_counter()
    bandwidth = copy_bandwidth_gbps(torch.device("cuda"))
    print(f"copy bandwidth {bandwidth:.0f} GB/s", flush=True)
    out = {}

    def part(label, fn):
        """Run one part; a failure is printed and recorded, and the other parts still run."""
        if label not in parts:
            return
        try:
            out[label] = fn()
        except Exception as exc:  # a GPU benchmark should not lose the other parts' numbers
            out[f"{label}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"  part {label} failed: {out[f'{label}_error']}", flush=True)
        torch.cuda.empty_cache()

    layers = 8 if quick else LAYERS
    batches = (1, 16) if quick else BATCHES
    sw = StepWeights(layers=layers)
    tune_all(sw, batches)
    part("step", lambda: step_rows(sw, bandwidth, batches, reps=reps))
    part("per_linear", lambda: per_linear_rows(sw, reps=reps))
    part("ladder", lambda: ladder_rows(sw, reps=reps))
    sw = None  # free the 17 GB of weights before the next parts
    torch.cuda.empty_cache()

    def fused():
        fsw = StepWeights(LLAMA3_8B_FUSED, layers=layers)
        tune_all(fsw, batches)
        return step_rows(fsw, bandwidth, batches, reps=reps, layout="fused qkv, gate_up", extras=False)

    part("fused", fused)
    part("bf16", lambda: bf16_rows(StepWeights(layers=layers, dtype=torch.bfloat16), bandwidth, reps=reps))
    part("prefill", lambda: prefill_rows(reps=reps))
    part("end_to_end", lambda: end_to_end_rows(reps=reps))
    rows = out.get("step") or [{"error": out.get("step_error", "no step rows")}]
    path = save_result(
        name, rows,
        description=("Llama-3-8B decode step: the 224 linear layers (7 per layer x 32 layers) as CUDA graphs, fp16 "
                     "cuBLAS vs the course's fused W4A16 Triton kernel (GPTQ packing, group 128) and baselines; "
                     "median of CUDA-event samples of graph replays"),
        command=f"python -m course_lib.bench w4a16 --name {name}" + (" --quick" if quick else ""),
        summary={"copy_gbps": bandwidth, "quick": quick, "layers": 8 if quick else LAYERS,
                 **{k: v for k, v in out.items() if k != "step"}, "tuned_configs": W.tuned_configs(),
                 "seconds": time.perf_counter() - t0})
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out
