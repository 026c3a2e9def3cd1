"""Every compressed variant the course builds, made from the float model by the chapters' own code and settings.

    ctx = make_context("course-model", model, tok, device)     # settings, one shared calibration set, a work dir
    v = build("GPTQ 4-bit", ctx)                               # v.model (to score), v.storage (bytes), v.runs_as
    variant_names("smollm2-135m")                              # what can be built for a model, in table order

Settings are the chapters' (their notebooks and recorded benchmarks):

* RTN / GPTQ (ch. 03): groups of 128, symmetric on GPTQ's grid, for the bundled model; SmolLM2 (576-wide
  layers: 128 does not divide them) asymmetric with groups of 64, as its recording (``real-model``) does. GPTQ:
  1% dampening, true-sequential, no act-order. AWQ (ch. 04): 4 bits, asymmetric, the same group size, 20 ratios,
  clipping searched. SmoothQuant W8A8 (ch. 04): alpha 0.5, int8 weights per output channel, int8 activations per
  token (dynamic), simulated in float.
* bitsandbytes (ch. 05): LLM.int8() with outlier threshold 6; NF4 with double quantization, blocks of 64,
  float32 compute on this device (transformers' BitsAndBytesConfig through ``bnb.library.load_quantized``).
* Mixed precision (ch. 06): GPTQ settings per layer chosen by ``allocate_dp`` on the end-to-end KL score of
  ``mixed.measure`` (chapter 06's allocator), at 3.5 and 4.65 bits per weight, saved as compressed-tensors.
* GGUF (ch. 06): Q8_0/Q4_0/Q4_1/Q5_0 written by ``gguf_io`` (every 2-D tensor, embeddings and head included),
  k-quants by llama.cpp's quantizer from an F16 file (only with ``llama_cpp``), scored as transformers reads them.
* Pruning (ch. 07): Wanda and SparseGPT, 50% unstructured and 2:4, on the same calibration set.
* Distillation (ch. 08): the bundled model's distilled student (``data/draft-model``: 2.2M parameters, logit KD).

Calibration: one set per model, ``calibration_batches(tok, n, seq, seed=0)``: 32 x 128 on a CPU (chapters 03 and
06's CPU profile), 128 x 256 on CUDA (their GPU profile and the GPU recordings), 8 x 128 with ``quick``.
Every variant is stored as its writer stores it, the tensors that stay float (embeddings, norms, head) in bfloat16;
every variant is scored with float32 compute (the dequantized weights; bitsandbytes with its own kernels).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import storage as st

BF16 = torch.bfloat16
# family -> the chapter notebook whose method it is (a variant is left out while its chapter does not exist)
CHAPTER = {"reference": None, "rtn": "03", "gptq": "03", "awq": "04", "smoothquant": "04", "bnb": "05",
           "mixed": "06", "gguf": "06", "prune": "07", "distill": "08"}
SIMULATED = "simulated: float32 compute on the de-quantized weights"


@dataclass(frozen=True)
class Spec:
    name: str
    family: str
    params: dict = field(default_factory=dict)
    needs: tuple[str, ...] = ()          # optional modules; missing -> left out, reason recorded
    only: tuple[str, ...] | None = None  # model names it applies to (None: every model)


SPECS: tuple[Spec, ...] = (
    Spec("float32", "reference", {"dtype": "float32"}),
    Spec("bf16", "reference", {"dtype": "bfloat16"}),
    *(Spec(f"RTN {b}-bit", "rtn", {"bits": b}) for b in (8, 4, 3, 2)),
    *(Spec(f"GPTQ {b}-bit", "gptq", {"bits": b}) for b in (8, 4, 3, 2)),
    Spec("AWQ 4-bit", "awq", {"bits": 4}),
    Spec("SmoothQuant W8A8", "smoothquant", {"alpha": 0.5, "activations": "per_token"}),
    Spec("bnb int8", "bnb", {"kind": "int8", "threshold": 6.0}, needs=("bitsandbytes",)),
    Spec("bnb nf4", "bnb", {"kind": "nf4", "double_quant": True}, needs=("bitsandbytes",)),
    *(Spec(f"mixed {t} bpw", "mixed", {"target_bpw": t}) for t in (3.5, 4.65)),
    *(Spec(f"GGUF {k}", "gguf", {"kind": k}, needs=("gguf",)) for k in ("Q8_0", "Q4_0", "Q4_1", "Q5_0")),
    *(Spec(f"GGUF {k}", "gguf", {"kind": k}, needs=("gguf", "llama_cpp")) for k in ("Q4_K_M", "Q5_K_M", "Q6_K")),
    *(Spec(f"{m} {t}", "prune", {"method": m.lower(), "target": t}) for m in ("Wanda", "SparseGPT")
      for t in ("50%", "2:4")),
    Spec("distilled student", "distill", {"source": "data/draft-model"}, only=("course-model",)),
)
SPEC = {s.name: s for s in SPECS}


@dataclass
class Context:
    """What every builder needs: the float32 model (never changed), its tokenizer, one calibration set, settings."""

    name: str
    model: nn.Module
    tokenizer: object
    calibration: torch.Tensor
    workdir: Path
    group_size: int
    symmetric: bool
    source: str | None = None              # a directory (or course model name) transformers loads the model from
    tokenizer_json: Path | None = None     # for GGUF files
    mixed_settings: tuple = ()
    kl_tokens: torch.Tensor | None = None
    measure_cache: Path | None = None      # None: the course cache (mixed.sensitivity)
    threads: int = 1
    cache: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def calibration_label(self) -> str:
        return f"{self.calibration.shape[0]} x {self.calibration.shape[1]}"


@dataclass
class Built:
    """A variant ready to score: the model, its storage, what computes it, and notes for the table."""

    name: str
    family: str
    model: nn.Module
    storage: st.Storage
    settings: str
    runs_as: str
    simulated: bool
    calibration: str | None = None
    gguf_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def variant_names(model_name: str | None = None) -> list[str]:
    """The variants the leaderboard knows, in table order (for one model: those that apply to it)."""
    return [s.name for s in SPECS if model_name is None or s.only is None or model_name in s.only]


def check_names(names, model_name: str | None = None) -> list[str]:
    unknown = [n for n in names if n not in SPEC]
    if unknown:
        raise ValueError(f"Unknown variant {', '.join(map(repr, unknown))}; the leaderboard knows: "
                         f"{', '.join(variant_names())}.")
    return list(names)


def left_out_reason(name: str, model_name: str, chapters_dir: Path | None = None) -> str | None:
    """Why a variant cannot be built here (its chapter not written yet, a library missing), or None."""
    from ..core.env import REPO_ROOT
    from ..core.optional import missing

    spec = SPEC[check_names([name])[0]]
    if spec.only is not None and model_name not in spec.only:
        return f"applies to {', '.join(spec.only)} only (chapter 08 distils the bundled model)"
    chapter = CHAPTER[spec.family]
    if chapter and not list(Path(chapters_dir or REPO_ROOT / "notebooks").glob(f"{chapter}_*.ipynb")):
        return f"chapter {chapter} does not exist yet"
    gone = missing(*spec.needs)
    if gone:
        return f"{', '.join(gone)} not installed" + (" (make llama-cpp builds it)" if "llama_cpp" in gone else "")
    return None


def make_context(name: str, model: nn.Module, tokenizer, workdir: Path, *, quick: bool = False,
                 threads: int = 1) -> Context:
    """The chapters' settings for `name`'s model on its device (module docstring)."""
    from ..lm.models import linear_layers, model_source
    from ..lm.tokens import calibration_batches
    from ..mixed.sensitivity import Setting

    cuda = next(model.parameters()).device.type == "cuda"
    n, seq = (8, 128) if quick else (128, 256) if cuda else (32, 128)
    wide = all(m.in_features % 128 == 0 for m in linear_layers(model).values())
    group = 128 if wide else 64
    if wide:  # chapter 06's settings: its CPU profile, or every setting on a GPU
        settings = [Setting(b, 128) for b in (2, 3, 4, 5, 6, 8)] + [Setting(3, 32), Setting(4, 32)]
        settings = [Setting(b, g) for b in (2, 3, 4, 5, 6, 8) for g in (32, 128)] if cuda and not quick else settings
    else:      # SmolLM2: groups of 64 only (cpu_mixed)
        settings = [Setting(b, 64) for b in (2, 3, 4, 5, 6, 8)]
    n_kl = 1 if (quick or (not cuda and not wide)) else 4  # SmolLM2 on a CPU: one KL window, as cpu_mixed
    dev = next(model.parameters()).device
    source = model_source(name)
    return Context(name=name, model=model, tokenizer=tokenizer,
                   calibration=calibration_batches(tokenizer, n, seq, seed=0).to(dev), workdir=Path(workdir),
                   group_size=group, symmetric=wide, source=source,
                   tokenizer_json=Path(source) / "tokenizer.json" if Path(source, "tokenizer.json").exists() else None,
                   mixed_settings=tuple(settings),
                   kl_tokens=calibration_batches(tokenizer, n_kl, 128, seed=0, split="validation").to(dev),
                   threads=threads)


def _fresh(ctx: Context) -> nn.Module:
    return copy.deepcopy(ctx.model)


def _float_parts(model: nn.Module, dtype: torch.dtype = BF16) -> nn.Module:
    """A copy whose tensors outside the quantized layers are in `dtype`: what a writer then stores in 16 bits."""
    out = copy.deepcopy(model)
    keep = set(st.quantized_layers(out))
    with torch.no_grad():
        for name, module in out.named_modules():
            if name in keep:
                continue
            for p in module.parameters(recurse=False):
                if p.is_floating_point():
                    p.data = p.data.to(dtype)
    return out


def _dir(ctx: Context, name: str) -> Path:
    d = ctx.workdir / name.replace(" ", "_").replace("%", "pct").replace(":", "-")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _grid(ctx: Context, bits: int) -> str:
    from ..quant.affine import grid_name

    return f"{bits}-bit g{ctx.group_size}, {grid_name(bits, ctx.symmetric, gptq_grid=ctx.symmetric)}"


# --- builders: (spec, ctx) -> Built ----------------------------------------------------------------------------

def _reference(spec: Spec, ctx: Context) -> Built:
    m = _fresh(ctx)
    dtype = getattr(torch, spec.params["dtype"])
    if dtype != torch.float32:
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(p.to(dtype).float())
    s = st.measured(st.save_dense(m, _dir(ctx, spec.name), dtype), m, f"safetensors, {spec.params['dtype']}")
    runs = "float32 (the reference)" if dtype == torch.float32 else f"{spec.params['dtype']} weights, float32 compute"
    return Built(spec.name, spec.family, m, s, spec.params["dtype"], runs, simulated=dtype != torch.float32)


def _rtn(spec: Spec, ctx: Context) -> Built:
    from ..quant.rtn import quantize_model_rtn

    bits, m = spec.params["bits"], _fresh(ctx)
    quantize_model_rtn(m, bits, symmetric=ctx.symmetric, granularity="group", group_size=ctx.group_size,
                       gptq_grid=True)
    s = st.computed(m, st.gptq_layout(bits, ctx.group_size), "GPTQ v1 layout (no RTN writer), float parts bf16")
    return Built(spec.name, spec.family, m, s, _grid(ctx, bits), SIMULATED, True,
                 notes=["bytes computed: the GPTQ checkpoint's layout"])


def _gptq(spec: Spec, ctx: Context) -> Built:
    from ..gptq import PACK_BITS, gptq_quantize_model, save_gptq_checkpoint

    bits, m = spec.params["bits"], _fresh(ctx)
    report = gptq_quantize_model(m, ctx.calibration, bits, group_size=ctx.group_size, symmetric=ctx.symmetric,
                                 progress=False)
    if bits in PACK_BITS:
        d = save_gptq_checkpoint(_float_parts(m), report, _dir(ctx, spec.name))
        s, notes = st.measured(d, m, "safetensors, GPTQ v1 (gptq.export)"), []
    else:
        s = st.computed(m, st.gptq_layout(bits, ctx.group_size), "GPTQ v1 layout, float parts bf16")
        notes = [f"bytes computed: save_gptq_checkpoint writes {PACK_BITS} bits"]
    return Built(spec.name, spec.family, m, s, _grid(ctx, bits) + ", 1% damping, true-sequential", SIMULATED, True,
                 ctx.calibration_label, notes=notes)


def _awq(spec: Spec, ctx: Context) -> Built:
    from ..awq.export import save_awq_checkpoint
    from ..awq.model import awq_quantize_model

    m = _fresh(ctx)
    report = awq_quantize_model(m, ctx.calibration, spec.params["bits"], group_size=ctx.group_size, symmetric=False,
                                progress=False)
    s = st.measured(save_awq_checkpoint(m, report, _dir(ctx, spec.name), dtype=BF16), m,
                    "safetensors, AWQ GEMM (awq.export)")
    return Built(spec.name, spec.family, m, s, f"4-bit g{ctx.group_size}, asymmetric [0, 15], clipping",
                 SIMULATED, True, ctx.calibration_label)


def _smoothquant(spec: Spec, ctx: Context) -> Built:
    from ..awq import smoothquant as sq

    m = _fresh(ctx)
    sq.smooth_model(m, sq.activation_absmax(m, ctx.calibration), alpha=spec.params["alpha"])
    s = st.computed(m, st.w8a8_layout, "int8 weights + fp16 scale per output channel, float parts bf16")
    sq.quantize_w8a8(m, spec.params["activations"])
    return Built(spec.name, spec.family, m, s, "alpha 0.5, W int8 per channel, A int8 per token (dynamic)",
                 "simulated W8A8: int8-rounded weights and activations, float32 compute", True, ctx.calibration_label,
                 notes=["bytes computed: no W8A8 writer in the course"])


def _bnb(spec: Spec, ctx: Context) -> Built:
    from ..bnb.library import load_quantized

    p = dict(spec.params)
    kind = p.pop("kind")
    d = _dir(ctx, spec.name)
    saved = load_quantized(ctx.source, kind, device=ctx.device, dtype=BF16, **p)  # the float parts in bf16
    saved.save_pretrained(d)
    del saved
    m = load_quantized(ctx.source, kind, device=ctx.device, dtype=torch.float32, compute_dtype=torch.float32, **p)
    s = st.measured(d, m, f"safetensors, bitsandbytes {kind} (save_pretrained)")
    settings = "threshold 6 (outliers in 16 bits)" if kind == "int8" else "blocks of 64, double quantization"
    return Built(spec.name, spec.family, m, s, settings, f"bitsandbytes {kind} kernels, float32 compute", False)


def _mixed(spec: Spec, ctx: Context) -> Built:
    from ..core.optional import have
    from ..mixed import allocate_dp, measure
    from ..mixed.checkpoint import quantize_allocation, save_mixed_checkpoint

    if "measurement" not in ctx.cache:
        ctx.cache["measurement"] = measure(ctx.model, ctx.calibration, ctx.mixed_settings, kl_tokens=ctx.kl_tokens,
                                           cache_dir=ctx.measure_cache)
    plan = allocate_dp(ctx.cache["measurement"].end_to_end(), spec.params["target_bpw"])
    m = _fresh(ctx)
    results = quantize_allocation(m, ctx.calibration, plan)
    settings = ", ".join(f"{k} x{v}" for k, v in plan.counts().items())
    if have("compressed_tensors"):
        d = save_mixed_checkpoint(_float_parts(m), results, _dir(ctx, spec.name))
        s, notes = st.measured(d, m, "safetensors, compressed-tensors pack-quantized"), []
    else:
        layouts = {name: (lambda o, i, s=setting: s.layer_bits(o, i) // 8) for name, setting in plan.choice.items()}
        s = st.computed(m, layouts, "compressed-tensors layout, float parts bf16")
        notes = ["bytes computed: compressed-tensors is not installed"]
    kl = ctx.kl_tokens.shape
    return Built(spec.name, spec.family, m, s, f"KL-scored allocation ({kl[0]} x {kl[1]} KL tokens): {settings}",
                 SIMULATED, True, ctx.calibration_label, notes=notes)


def _gguf(spec: Spec, ctx: Context) -> Built:
    from transformers import AutoModelForCausalLM

    from ..mixed import gguf_io

    kind = spec.params["kind"]
    d = _dir(ctx, spec.name)
    path = d / "model.gguf"
    if kind in gguf_io.WRITABLE:
        gguf_io.write_gguf(ctx.model, path, kind, tokenizer_json=ctx.tokenizer_json)
        made_by = "gguf_io"
    else:
        from ..mixed import llama_cpp as lc

        if "f16_gguf" not in ctx.cache:
            ctx.cache["f16_gguf"] = gguf_io.write_gguf(ctx.model, _dir(ctx, "gguf-F16") / "model.gguf", "F16",
                                                       tokenizer_json=ctx.tokenizer_json)
        lc.quantize(ctx.cache["f16_gguf"], path, kind, threads=ctx.threads)
        made_by = "llama.cpp's quantizer from F16"
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=path.name, dtype=torch.float32).to(ctx.device).eval()
    s = st.measured(d, m, f"GGUF {kind} ({made_by})")
    return Built(spec.name, spec.family, m, s, f"{kind}, every 2-D tensor ({made_by})",
                 SIMULATED + " (transformers reads the GGUF)", True, gguf_path=path)


def _prune(spec: Spec, ctx: Context) -> Built:
    from ..prune.model import prune_model

    m, target = _fresh(ctx), spec.params["target"]
    kw = {"nm": target} if ":" in target else {"sparsity": int(target.rstrip("%")) / 100}
    prune_model(m, ctx.calibration, spec.params["method"], progress=False, **kw)
    if ":" in target:
        s = st.computed(m, st.sparse24_layout, "2:4 semi-structured (bf16 values, 2-bit indices), float parts bf16")
        notes = ["bytes computed: the 2:4 layout of cuSPARSELt/CUTLASS (no course writer)"]
    else:
        s = st.measured(st.save_dense(m, _dir(ctx, spec.name)), m, "safetensors, bf16, dense (zeros stored)")
        notes = ["stored dense: unstructured zeros save no bytes without a sparse format"]
    return Built(spec.name, spec.family, m, s, f"{target} of every block linear layer",
                 "dense float32 with zeros (no sparse kernel)", True, ctx.calibration_label, notes=notes)


def _student(spec: Spec, ctx: Context) -> Built:
    from ..serving.draft import DRAFT_DIR, load_draft

    ours = Path(ctx.source or "") / "tokenizer.json"
    if not ours.exists() or (DRAFT_DIR / "tokenizer.json").read_bytes() != ours.read_bytes():
        raise ValueError(f"{DRAFT_DIR} does not share {ctx.name}'s tokenizer: it is not this model's student.")
    m = load_draft(ctx.device, torch.float32)
    s = st.measured(st.save_dense(m, _dir(ctx, spec.name)), m, "safetensors, bf16 (the student's own layers)")
    c = m.config
    return Built(spec.name, spec.family, m, s, f"{sum(p.numel() for p in m.parameters()) / 1e6:.1f}M parameters, "
                 f"{c.num_hidden_layers} layers x {c.hidden_size}, logit KD from the bundled model",
                 "float32 (a smaller model, bf16 weights)", False,
                 notes=["bpw counts the student's own linear layers (16 bits); its bytes are the compression"])


BUILDERS = {"reference": _reference, "rtn": _rtn, "gptq": _gptq, "awq": _awq, "smoothquant": _smoothquant,
            "bnb": _bnb, "mixed": _mixed, "gguf": _gguf, "prune": _prune, "distill": _student}


def build(name: str, ctx: Context) -> Built:
    """Build variant `name` from ctx.model (left unchanged), save it where its writer can, and time it."""
    spec = SPEC[check_names([name])[0]]
    start = time.perf_counter()
    built = BUILDERS[spec.family](spec, ctx)
    built.model.eval()
    built.seconds = time.perf_counter() - start
    return built
