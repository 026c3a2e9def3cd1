"""Reading the recorded W4A16 benchmark (``w4a16_bench``): the decode step per batch, the tricks one at a
time, per layer, bf16 against PyTorch's own int4 kernel, the prefill crossover, tokens per second, and the
course's targets against what was measured.

Every function takes a ``Recorded`` (``load_w4a16()``), so the notebook prints the same analysis for
whichever GPU recorded it. ``run_interpreted`` runs the teaching kernel on a CPU under Triton's
interpreter, in a child process (the interpreter must be switched on before Triton is imported).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from ..core.results import Recorded, load_result

TARGETS = {1: 3.0, 8: 2.5, 16: 2.5}  # the course's goals (COURSE_GUIDE section 7): speedup over fp16 cuBLAS


def load_w4a16(name: str = "h200_w4a16") -> Recorded:
    return load_result(name)


def _speedups(rows: list[dict], method: str = "course fused (tuned)") -> dict[int, float]:
    return {r["batch"]: r["speedup_vs_fp16"] for r in rows if r["method"] == method}


def step_table(rec: Recorded, *, fused: bool = False) -> list[dict]:
    """One decode step's 224 linears per batch and method: ms, speedup, GB/s and share of the copy bandwidth."""
    rows = rec.summary["fused"] if fused else rec.rows
    return [{"batch": r["batch"], "method": r["method"], "ms": r["ms"], "× fp16": r["speedup_vs_fp16"],
             "GB/s": r["gbps"], "% of copy BW": 100 * r["share_of_copy_bw"], "bytes allow": r["ideal_speedup_from_bytes"]}
            for r in rows]


def batch_speedups(rec: Recorded) -> list[dict]:
    """The fused kernel's speedup over fp16 per batch, with separate and with fused projections."""
    sep, fus = _speedups(rec.rows), _speedups(rec.summary.get("fused", []))
    ideal = {r["batch"]: r["ideal_speedup_from_bytes"] for r in rec.rows}
    return [{"batch": b, "separate q/k/v, gate/up": sep[b], "fused qkv, gate_up": fus.get(b),
             "bytes allow": ideal[b], "target": TARGETS.get(b)} for b in sorted(sep)]


def targets(rec: Recorded) -> list[dict]:
    """Each target against the better of the two layouts."""
    out = []
    for r in batch_speedups(rec):
        if r["target"] is None:
            continue
        best = max(v for v in (r["separate q/k/v, gate/up"], r["fused qkv, gate_up"]) if v is not None)
        out.append({"batch": r["batch"], "target": r["target"], "measured (best layout)": best,
                    "bytes allow": r["bytes allow"], "met": best >= r["target"]})
    return out


def ladder_table(rec: Recorded, batch: int = 1) -> list[dict]:
    """The speed tricks added one at a time: ms and speedup over fp16 at one batch size."""
    return [{"step": r["step"], "ms": r["ms"], "× fp16": r["speedup_vs_fp16"]}
            for r in rec.summary["ladder"] if r["batch"] == batch]


def per_linear_table(rec: Recorded, batch: int = 1) -> list[dict]:
    """Per kind of layer: microseconds per call for fp16 and the tuned kernel, and the tuned configuration."""
    out = []
    for r in rec.summary["per_linear"]:
        if r["batch"] != batch:
            continue
        c = r["config"]
        path = "tl.dot" if c["dot"] else ("half2 PTX" if c.get("h2") else "FMA")
        out.append({"linear": r["linear"], "k": r["k"], "n": r["n"], "fp16 µs": r["fp16_us"], "4-bit µs": r["fused_us"],
                    "× fp16": r["speedup"], "tile": f"{c['block_n']}x{c['block_k']}", "split-K": c["split_k"],
                    "path": path, "warps": c["num_warps"]})
    return out


def bf16_table(rec: Recorded) -> list[dict]:
    return [{"batch": r["batch"], "method": r["method"], "ms": r["ms"], "× bf16": r["speedup_vs_fp16"]}
            for r in rec.summary["bf16"]]


def prefill_table(rec: Recorded) -> list[dict]:
    return [{"tokens": r["tokens"], "fp16 µs": r["fp16_us"], "fused µs": r["fused_us"],
             "dequant + cuBLAS µs": r["dequant_cublas_us"], "faster 4-bit path": r["faster_4bit_path"]}
            for r in rec.summary["prefill"]]


def prefill_crossovers(rec: Recorded) -> dict:
    """The smallest token count at which the fused kernel loses to fp16, and at which de-quantize + cuBLAS wins."""
    rows = rec.summary["prefill"]
    loses = next((r["tokens"] for r in rows if r["fused_us"] > r["fp16_us"]), None)
    dequant = next((r["tokens"] for r in rows if r["dequant_cublas_us"] < r["fused_us"]), None)
    return {"fused slower than fp16 from": loses, "dequant + cuBLAS faster than fused from": dequant}


def end_to_end_table(rec: Recorded) -> list[dict]:
    return [{"weights": r["weights"], "ms/token": r["ms_per_token"], "tokens/s": r["tokens_per_s"],
             "speedup": r["speedup"], "bytes allow": r["ideal_speedup_from_bytes"]} for r in rec.summary["end_to_end"]]


def plot_batches(rec: Recorded):
    """Speedup over fp16 against batch size: both layouts, what the bytes allow, and the targets."""
    from ..core.plotting import new_axes

    rows = batch_speedups(rec)
    fig, ax = new_axes()
    b = [r["batch"] for r in rows]
    ax.plot(b, [r["separate q/k/v, gate/up"] for r in rows], "o-", label="course kernel, separate projections")
    if all(r["fused qkv, gate_up"] is not None for r in rows):
        ax.plot(b, [r["fused qkv, gate_up"] for r in rows], "s-", label="course kernel, fused qkv and gate_up")
    ax.plot(b, [r["bytes allow"] for r in rows], "k--", label="what the bytes allow")
    ax.plot([r["batch"] for r in rows if r["target"]], [r["target"] for r in rows if r["target"]], "r*",
            markersize=12, label="course target")
    ax.axhline(1.0, color="grey", lw=1)
    ax.set(xscale="log", xticks=b, xticklabels=[str(v) for v in b], xlabel="sequences per decode step (batch)",
           ylabel="speedup over fp16 cuBLAS", title=f"Llama-3-8B decode step, 4-bit weights ({rec.device})")
    ax.set_ylim(0.6, 4.9)
    ax.legend(loc="upper center", ncol=2, fontsize=9)
    return fig


# ----------------------------------------------------------------------------- the kernel on a CPU

def run_interpreted(k: int = 256, n: int = 64, m: int = 3, group_size: int = 128, seed: int = 0,
                    timeout: float = 300) -> dict:
    """Run the teaching kernel under Triton's interpreter in a child process, against de-quantize-then-matmul.

    Returns {"max |Δ|", "largest |y|", "shape"}; raises RuntimeError with the child's error if it fails.
    """
    script = textwrap.dedent(f"""
        import json, torch
        from course_lib.attention.triton_flash import interpreter_numpy_fix
        from course_lib.kernels import w4a16 as W
        interpreter_numpy_fix()
        qw, s, qz = W.random_packed({k}, {n}, {group_size}, seed={seed})
        x = torch.randn({m}, {k}, generator=torch.Generator().manual_seed({seed})).half()
        y = W.w4a16_simple(x, qw, s, qz, {group_size}, block_n=32)
        ref = W.reference_matmul(x, qw, s, qz, {group_size})
        print(json.dumps({{"max |Δ|": (y.float() - ref.float()).abs().max().item(),
                          "largest |y|": ref.float().abs().max().item(), "shape": list(y.shape)}}))
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError("The kernel failed under Triton's interpreter:\n" + done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def live_rows(batches=(1, 16), copies: int = 8, reps: int = 20) -> list[dict]:
    """On a CUDA GPU, now: one Llama-3-8B gate projection (4096 -> 14336), fp16 cuBLAS against the tuned kernel,
    `copies` distinct weights per call so that they come from HBM, timed as CUDA graphs (about 1.2 GB of memory)."""
    import torch
    from torch.nn import functional as F

    from . import w4a16 as W
    from .w4a16_bench import GROUP, graph_ms, random_packed_cuda

    k, n = 4096, 14336
    dense = [torch.randn(n, k, device="cuda", dtype=torch.float16) / 64 for _ in range(copies)]
    packed = [random_packed_cuda(k, n, seed=i) for i in range(copies)]
    rows = []
    for m in batches:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        W.w4a16_matmul(x, *packed[0], GROUP)  # tunes this shape once
        t16 = graph_ms(lambda: [F.linear(x, w) for w in dense], reps=reps) / copies
        t4 = graph_ms(lambda: [W.w4a16_matmul(x, q, s, z, GROUP) for q, s, z in packed], reps=reps) / copies
        rows.append({"batch": m, "fp16 µs": t16 * 1e3, "4-bit µs": t4 * 1e3, "× fp16": t16 / t4})
    return rows
