"""Where sparsity really speeds a matmul up: zeros in a dense kernel, CSR, and 2:4 on the GPU.

    rows = cpu_sparse_matmul()                          # CPU, a few seconds on one thread
    python -m course_lib.bench sparse24 [--name ...]    # GPU (sm80+): data/results/<gpu>_sparse24.json

A pruned nn.Linear still holds a dense matrix with zeros in it, and a dense GEMM multiplies the
zeros like any other number: same time at 0%, 50% or 90% zeros. Speed needs a format that skips them:

* CSR (compressed sparse rows: values, column indices, row pointers). Irregular: each kept weight
  costs an index load and the memory access is scattered, so it beats the dense kernel only at high
  sparsity (around 90% on CPU).
* 2:4 semi-structured (NVIDIA Ampere and newer, sm80+): in every 4 consecutive weights along the
  input dimension at most 2 are non-zero. The kernel stores the 2 values plus 2-bit indices
  (values 1/2, metadata 1/16 of the dense fp16 size) and sparse tensor cores skip the zeros: at most
  2x on the multiply. torch.sparse.to_sparse_semi_structured has two backends, cuSPARSELt
  (default) and CUTLASS (SparseSemiStructuredTensor._FORCE_CUTLASS = True).

Constraints of torch's semi-structured tensors (torch/sparse/semi_structured.py), all checked here:
CUDA only, 2-D, contiguous; dtypes fp16/bf16/int8 (+fp8 for cuSPARSELt, +fp32 for CUTLASS); the
sparse weight's (rows, cols) must be multiples of (16, 16) for cuSPARSELt fp16/bf16, (32, 64) for
CUTLASS fp16/bf16 (int8: (32, 32) and (16, 128)); the dense input is zero-padded by torch to a
multiple of 8 tokens, so M = 1 runs, at the cost of M = 8. The kernels need compute capability
8.0 or newer: on a T4 (sm75, Colab's free GPU) only dense, dense-with-zeros and CSR run. torch's
CUTLASS 2:4 kernels are built for sm8x only: on an H100 (sm90) the conversion works but the matmul
raises "Supported only on GPUs with compute capability 8.x"; cuSPARSELt runs on sm80 and sm90.

What the H100 recording (data/results/h100_sparse24.json, torch 2.11, cuSPARSELt 0.8) shows: in
torch 2.11 each eager cuSPARSELt call rebuilds its matmul descriptors and plan on the host
(pytorch issue 153825), about 0.5-1 ms per call whatever M, so eager 2:4 is slower than dense up
to M = 2048. The kernels alone (kernel_ms, fp16) are 1.5-1.7x faster than dense at M = 8192 and
0.46-1.02x of dense at decode sizes (M <= 16); a whole Llama MLP block, kernels only, gains ~1.3x
at prefill (M = 2048) and loses 16-25% at decode (M = 1-16).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

CPU_SPARSITIES = (0.5, 0.7, 0.9, 0.95, 0.99)
# (out_features, in_features) of Llama-2-7B (hidden 4096, MLP 11008) and Llama-3-8B (MLP 14336) linears.
LLAMA_SHAPES = {
    "q/o 4096x4096": (4096, 4096),
    "gate/up 7B 11008x4096": (11008, 4096),
    "gate/up 8B 14336x4096": (14336, 4096),
    "down 7B 4096x11008": (4096, 11008),
    "down 8B 4096x14336": (4096, 14336),
}
GPU_TOKENS = (1, 16, 128, 512, 2048, 8192)
GPU_FORMATS = ("dense", "dense 50% zeros", "2:4 cuSPARSELt", "2:4 CUTLASS", "CSR 50%")
T4_FORMATS = ("dense", "dense 50% zeros", "CSR 50%")  # what runs below sm80
MLP_SHAPES = {"Llama-2-7B MLP": (4096, 11008), "Llama-3-8B MLP": (4096, 14336)}  # (hidden, intermediate)
MLP_TOKENS = (1, 4, 16, 2048)
CSR_MAX_TOKENS = 2048  # cuSPARSE SpMM at 50% is far slower than dense; larger M only costs device time
L2_FLUSH_BYTES = 200 * 2**20  # rotate enough weight copies to exceed 4x an H100's 50 MB L2 cache


def mask_2_4(W: torch.Tensor) -> torch.Tensor:
    """Magnitude 2:4 mask (True = kept): the 2 largest |w| of every 4 consecutive inputs of each row."""
    out_f, in_f = W.shape
    if in_f % 4:
        raise ValueError(f"in_features={in_f} is not a multiple of 4, so the rows can't be split into groups of 4.")
    groups = W.abs().reshape(out_f, in_f // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(out_f, in_f)


def random_zeros(W: torch.Tensor, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """W with a random `sparsity` fraction of its entries set to 0 (unstructured, same shape, dense)."""
    keep = torch.rand(W.shape, generator=generator, device=generator.device) >= sparsity
    return W * keep.to(W.device)


def csr_linear(x: torch.Tensor, W_csr: torch.Tensor) -> torch.Tensor:
    """x (M, in) @ W^T for W stored as CSR (out, in): torch multiplies sparse @ dense, so (W x^T)^T."""
    return torch.mm(W_csr, x.t().contiguous()).t()


def _interleaved_ms(fns: list, reps: int) -> list[float]:
    """Median ms of each fn, timed round-robin (fn 0, 1, ..., 0, 1, ...) so that a change in the
    machine's load during the measurement hits every candidate alike."""
    samples: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()  # warm-up
    for _ in range(reps):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            samples[i].append(time.perf_counter() - start)
    return [statistics.median(s) * 1e3 for s in samples]


def cpu_sparse_matmul(*, out_features: int = 2048, in_features: int = 2048, tokens: int = 64,
                      zero_sparsities=(0.5, 0.9), csr_sparsities=CPU_SPARSITIES, reps: int = 7,
                      seed: int = 0) -> list[dict]:
    """Time y = x W^T in fp32 on CPU: dense W, dense W with zeros, and W as torch.sparse CSR.

    Rows {"format", "sparsity", "ms", "speedup"} (speedup = dense ms / ms; median of `reps`, the
    candidates timed in turn). Uses torch's current thread count; about 2 s on one thread by default.
    """
    for name, value in (("out_features", out_features), ("in_features", in_features), ("tokens", tokens),
                        ("reps", reps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    for s in (*zero_sparsities, *csr_sparsities):
        if not 0 <= s < 1:
            raise ValueError(f"sparsities must lie in [0, 1), got {s!r}.")
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(out_features, in_features, generator=gen) / in_features**0.5
    x = torch.randn(tokens, in_features, generator=gen)
    cases = [("dense", 0.0, W, F.linear)]
    cases += [("dense, zeros inside", s, random_zeros(W, s, gen), F.linear) for s in zero_sparsities]
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        cases += [("CSR", s, random_zeros(W, s, gen).to_sparse_csr(), csr_linear) for s in csr_sparsities]
        times = _interleaved_ms([lambda w=w, op=op: op(x, w) for _, _, w, op in cases], reps)
    return [{"format": fmt, "sparsity": s, "ms": ms, "speedup": times[0] / ms}
            for (fmt, s, _, _), ms in zip(cases, times)]


# ----------------------------------------------------------------------------------------- GPU


def require_sparse24_gpu(what: str = "The 2:4 sparse benchmark") -> None:
    """Raise a clear error unless CUDA is here with compute capability >= 8.0 (2:4 sparse tensor cores)."""
    from ..core.env import DeviceUnavailableError

    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"{what} needs an NVIDIA GPU with CUDA, and torch sees none here. On CPU, cpu_sparse_matmul() "
            "measures dense vs CSR, and the notebook shows the H100 recording (data/results/h100_sparse24.json).")
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 0):
        raise DeviceUnavailableError(
            f"{what} needs 2:4 sparse tensor cores, i.e. compute capability 8.0 or newer (Ampere: A100, RTX 30xx; "
            f"Ada: L4, RTX 40xx; Hopper: H100), but {torch.cuda.get_device_name()} is sm{major}{minor}. "
            "torch's semi-structured kernels (cuSPARSELt on sm80+, CUTLASS on sm8x only) do not run there. On this "
            "GPU (e.g. Colab's "
            f"T4) the dense paths and CSR still work: linear_rows(formats={T4_FORMATS}).")


def semi_structured_constraints() -> dict:
    """torch's minimum shapes per backend and dtype: {backend: {dtype: {sparse_min_rows, ...}}}."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    return {cls.BACKEND: {str(dt).replace("torch.", ""): c._asdict() for dt, c in cls._DTYPE_SHAPE_CONSTRAINTS.items()}
            for cls in (SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS)}


def to_2_4(W: torch.Tensor, backend: str = "cuSPARSELt"):
    """W (already 2:4, contiguous, CUDA) as a torch semi-structured tensor of `backend` (cuSPARSELt or CUTLASS).

    Raises ValueError (with torch's minimum shape) when W's shape does not fit the backend.
    """
    from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT, \
        SparseSemiStructuredTensorCUTLASS, to_sparse_semi_structured

    cls = {"cuSPARSELt": SparseSemiStructuredTensorCUSPARSELT, "CUTLASS": SparseSemiStructuredTensorCUTLASS}[backend]
    rows, cols = W.shape
    c = cls._DTYPE_SHAPE_CONSTRAINTS.get(W.dtype)
    if c is None:
        raise ValueError(f"{backend} 2:4 does not take {W.dtype}; it takes {list(cls._DTYPE_SHAPE_CONSTRAINTS)}.")
    if rows % c.sparse_min_rows or cols % c.sparse_min_cols:
        raise ValueError(f"{backend} 2:4 needs a weight whose (rows, cols) are multiples of "
                         f"({c.sparse_min_rows}, {c.sparse_min_cols}) for {W.dtype}; got {tuple(W.shape)}.")
    before = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "CUTLASS"
    try:
        with warnings.catch_warnings():  # "The PyTorch API of SparseSemiStructuredTensor is in prototype stage"
            warnings.simplefilter("ignore", UserWarning)
            return to_sparse_semi_structured(W)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = before


def _weights(fmt: str, W: torch.Tensor, W24: torch.Tensor, gen: torch.Generator):
    """One weight copy in format `fmt`, and the function computing y = x W^T with it."""
    if fmt == "dense":
        return W, F.linear
    if fmt == "dense 50% zeros":
        return random_zeros(W, 0.5, gen), F.linear
    if fmt.startswith("2:4"):
        return to_2_4(W24, fmt.split()[1]), F.linear
    if fmt == "CSR 50%":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return random_zeros(W, 0.5, gen).to_sparse_csr(), csr_linear
    raise ValueError(f"Unknown format {fmt!r}; choose from {GPU_FORMATS}.")


def _rotating(op, x, copies):
    """A no-argument call of op(x, w) that cycles through the weight copies (no copy stays in L2)."""
    state = {"i": 0}

    def call() -> None:
        state["i"] = (state["i"] + 1) % len(copies)
        op(x, copies[state["i"]])

    return call


def kernel_ms(fn, calls: int = 16) -> float | None:
    """GPU busy time of one fn() call in ms: the device time of its kernels, measured by the profiler
    (CUPTI), without the host-side gaps between them. None when the profiler can't run here."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
        # kernels, memsets and copies only: launch calls (CPU events) also carry their kernels' time
        total_us = sum(e.device_time_total for e in prof.events() if e.device_type == DeviceType.CUDA)
    except Exception:  # noqa: BLE001 - a missing or busy CUPTI must not stop the benchmark
        return None
    return total_us / calls / 1e3 if total_us > 0 else None


def linear_rows(*, shapes=LLAMA_SHAPES, tokens=GPU_TOKENS, dtypes=(torch.float16, torch.bfloat16),
                formats=GPU_FORMATS, reps: int = 20, seed: int = 0, device="cuda", verbose: bool = False) -> list[dict]:
    """y = x W^T on the GPU for each dtype, weight shape, token count M and format.

    Rows {"dtype", "shape", "out", "in", "tokens", "format", "ms", "tflops", "speedup", "kernel_ms",
    "kernel_speedup", "rel_err", "note"}: ms is the eager call as a user gets it (CUDA events around
    back-to-back calls, median); kernel_ms the GPU time of its kernels alone (profiler; host gaps
    excluded: what CUDA graphs or a serving engine would approach; CUDA only);
    tflops counts the dense 2·M·out·in for every format (useful work); speedup = dense ms / ms;
    rel_err = max |y - y_ref| / max |y_ref| of a 2:4 format against F.linear with the masked weight.
    A format a shape, dtype or M can't use gets ms None and a note, never a crash.
    device: "cuda" (the benchmark), or "cpu" to try the dense and CSR formats on small shapes.
    verbose: print each row as it is measured.
    """
    from ..core.timing import median_time

    device = torch.device(device)
    wants_2_4 = any(f not in T4_FORMATS for f in formats)
    if device.type == "cuda" and (wants_2_4 or not torch.cuda.is_available()):
        require_sparse24_gpu()
    elif wants_2_4:
        raise ValueError(f"2:4 formats run on CUDA only; on {device} pick from {T4_FORMATS}.")
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for dtype in dtypes:
        for label, (out_f, in_f) in shapes.items():
            n_copies = min(8, max(2, math.ceil(L2_FLUSH_BYTES / (out_f * in_f * torch.finfo(dtype).bits // 8))))
            dense = [(torch.randn(out_f, in_f, device=device, generator=gen) / in_f**0.5).to(dtype)
                     for _ in range(n_copies)]
            masked = [(w * mask_2_4(w)).contiguous() for w in dense]
            dense_ms: dict[int, float] = {}
            dense_kernel_ms: dict[int, float | None] = {}
            for fmt in formats:
                try:
                    copies, ops = zip(*(_weights(fmt, w, w24, gen) for w, w24 in zip(dense, masked)))
                    setup_note = ""
                except (RuntimeError, ValueError, NotImplementedError) as exc:
                    copies, setup_note = None, str(exc).split("\n")[0][:120]
                for m in tokens:
                    row = {"dtype": str(dtype).replace("torch.", ""), "shape": label, "out": out_f, "in": in_f,
                           "tokens": m, "format": fmt, "ms": None, "tflops": None, "speedup": None,
                           "kernel_ms": None, "kernel_speedup": None, "rel_err": None, "note": setup_note}
                    if copies is not None and fmt == "CSR 50%" and m > CSR_MAX_TOKENS:
                        row["note"] = f"not timed above M={CSR_MAX_TOKENS} (slow; device time)"
                    elif copies is not None:
                        x = torch.randn(m, in_f, device=device, generator=gen).to(dtype)
                        try:
                            if fmt.startswith("2:4"):
                                ref = F.linear(x, masked[0]).float()
                                row["rel_err"] = ((ops[0](x, copies[0]).float() - ref).abs().max()
                                                  / ref.abs().max()).item()
                            call = _rotating(ops[0], x, copies)
                            seconds = median_time(call, device, reps=reps if fmt != "CSR 50%" else 5, warmup=3,
                                                  inner=len(copies))
                            row.update(ms=seconds * 1e3, tflops=2 * m * out_f * in_f / seconds / 1e12)
                            if device.type == "cuda":
                                row["kernel_ms"] = kernel_ms(call, calls=2 * len(copies))
                            if fmt == "dense":
                                dense_ms[m], dense_kernel_ms[m] = row["ms"], row["kernel_ms"]
                            if m in dense_ms:
                                row["speedup"] = dense_ms[m] / row["ms"]
                            if row["kernel_ms"] and dense_kernel_ms.get(m):
                                row["kernel_speedup"] = dense_kernel_ms[m] / row["kernel_ms"]
                        except (RuntimeError, NotImplementedError) as exc:
                            row["note"] = str(exc).split("\n")[0][:120]
                    rows.append(row)
                    if verbose:
                        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
                del copies
                torch.cuda.empty_cache()
    return rows


def _mlp(x, gate, up, down):
    """Llama's MLP: down(silu(gate x) * up x)."""
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def mlp_rows(*, shapes=MLP_SHAPES, tokens=MLP_TOKENS, dtype=torch.float16, backends=("cuSPARSELt", "CUTLASS"),
             reps: int = 30, seed: int = 0, device="cuda", verbose: bool = False) -> list[dict]:
    """End to end: a Llama MLP block with all three linears dense vs 2:4, decode (small M) and prefill.

    Rows {"block", "tokens", "format", "ms", "speedup", "kernel_ms", "kernel_speedup", "note"} (ms and
    kernel_ms as in linear_rows); the block's weights (270-350 MB) dwarf L2. device="cpu" with
    backends=() runs the dense block only (for tests).
    """
    from ..core.timing import median_time

    device = torch.device(device)
    if device.type == "cuda" or backends:
        require_sparse24_gpu("The 2:4 MLP benchmark")
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for label, (hidden, inter) in shapes.items():
        shapes_ = ((inter, hidden), (inter, hidden), (hidden, inter))  # gate, up, down
        dense = [(torch.randn(s, device=device, generator=gen) / s[1]**0.5).to(dtype) for s in shapes_]
        masked = [(w * mask_2_4(w)).contiguous() for w in dense]
        variants = {"dense": dense}
        for backend in backends:
            try:
                variants[f"2:4 {backend}"] = [to_2_4(w, backend) for w in masked]
            except (RuntimeError, ValueError) as exc:
                rows.append({"block": label, "tokens": None, "format": f"2:4 {backend}", "ms": None, "speedup": None,
                             "kernel_ms": None, "kernel_speedup": None, "note": str(exc).split("\n")[0][:120]})
        for m in tokens:
            x = torch.randn(m, hidden, device=device, generator=gen).to(dtype)
            dense_ms = dense_kernel = None
            for fmt, weights in variants.items():
                row = {"block": label, "tokens": m, "format": fmt, "ms": None, "speedup": None, "kernel_ms": None,
                       "kernel_speedup": None, "note": ""}
                try:
                    block = lambda w=weights: _mlp(x, *w)  # noqa: E731
                    ms = median_time(block, device, reps=reps, warmup=5) * 1e3
                    dense_ms = dense_ms or ms
                    row.update(ms=ms, speedup=dense_ms / ms)
                    if device.type == "cuda":
                        row["kernel_ms"] = kernel_ms(block)
                        dense_kernel = dense_kernel if fmt != "dense" else row["kernel_ms"]
                        if row["kernel_ms"] and dense_kernel:
                            row["kernel_speedup"] = dense_kernel / row["kernel_ms"]
                except (RuntimeError, NotImplementedError) as exc:
                    row["note"] = str(exc).split("\n")[0][:120]
                rows.append(row)
                if verbose:
                    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        del dense, masked, variants
        torch.cuda.empty_cache()
    return rows


def speedup_table(rows: list[dict], fmt: str = "2:4 cuSPARSELt", dtype: str = "float16",
                  column: str = "speedup") -> list[dict]:
    """One row per weight shape: `column` (speedup or kernel_speedup) of `fmt` at each M (None where not timed)."""
    table: dict[str, dict] = {}
    for r in rows:
        if r["format"] == fmt and r["dtype"] == dtype:
            table.setdefault(r["shape"], {"shape": r["shape"]})[f"M={r['tokens']}"] = r.get(column)
    return list(table.values())


def record_sparse24(name: str | None = None) -> None:
    """Run linear_rows and mlp_rows on this GPU and save data/results/<gpu>_sparse24.json."""
    from ..core.timing import device_slug
    from ..core.results import save_result

    require_sparse24_gpu()
    name = name or f"{device_slug()}_sparse24"
    rows = linear_rows(verbose=True)
    mlp = mlp_rows(verbose=True)
    summary = {
        "speedup_2_4_cusparselt_fp16": speedup_table(rows),
        "kernel_speedup_2_4_cusparselt_fp16": speedup_table(rows, column="kernel_speedup"),
        "kernel_speedup_2_4_cusparselt_bf16": speedup_table(rows, dtype="bfloat16", column="kernel_speedup"),
        "speedup_2_4_cutlass_fp16": speedup_table(rows, "2:4 CUTLASS"),
        "mlp": mlp,
        "constraints": semi_structured_constraints(),
        "cusparselt_version": torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None,
        "capability": "sm{}{}".format(*torch.cuda.get_device_capability()),
        "l2_flush_bytes": L2_FLUSH_BYTES,
    }
    command = f"python -m course_lib.bench sparse24 --name {name}"
    path = save_result(name, rows, command=command, summary=summary, description=(
        "y = x W^T at Llama-2-7B / Llama-3-8B linear shapes, W (out x in): dense F.linear, a dense W with 50% random "
        "zeros, 2:4 via torch.sparse.to_sparse_semi_structured (cuSPARSELt and CUTLASS backends, magnitude 2:4 "
        f"masks) and CSR at 50%; ms: eager calls timed with CUDA events, median of 20 (CSR 5); kernel_ms: GPU time of "
        f"the kernels alone (torch.profiler), without host gaps; weight copies rotated past {L2_FLUSH_BYTES >> 20} "
        "MB so L2 holds none; tflops counts the dense 2*M*out*in. summary.mlp: a whole Llama MLP block, fp16."))
    print(f"wrote {path}")
