"""The chapter's experiments, sized by profile: white-box and black-box runs, and the compression table.

``PROFILES["small"]`` is what the notebook runs on a CPU (a few dozen steps: it shows the machinery),
``PROFILES["medium"]`` what it runs on a GPU, and ``PROFILES["large"]`` is what a GPU runs and what ``python -m course_lib.bench distill`` records in
data/results/h100_distill.json (thousands of steps: it shows the outcome).
"""

from __future__ import annotations

import copy
import time

import torch

from ..lm.perplexity import FAST, perplexity
from ..lm.tokens import token_stream
from .encoder import ENCODER_PROFILES
from .loss import distillation_loss, soft_targets
from .sequence import TeacherSamples, repeated_ngrams, teacher_corpus
from .student import STUDENT, new_student, param_count
from .trainer import CorpusWindows, DistillConfig, evaluate, make_eval_set, train_student

PROFILES = {
    "small": {
        "train": DistillConfig(steps=16, batch_size=8, seq_len=128, lr=2e-3, warmup=4, eval_every=8),
        "eval_tokens": 2048, "samples": 64, "prompt_len": 16, "sample_batch": 64,
        "context": {"steps": 24, "n_train": 32, "n_test": 16},
        "encoder": ENCODER_PROFILES["small"],
    },
    "medium": {  # the notebook on a GPU: a few minutes, live beside the large recording
        "train": DistillConfig(steps=300, batch_size=32, seq_len=256, lr=2e-3, warmup=30, eval_every=50),
        "eval_tokens": 16384, "samples": 4096, "prompt_len": 16, "sample_batch": 1024,
        "context": {"steps": 100, "n_train": 128, "n_test": 64, "batch_size": 16},
        "encoder": ENCODER_PROFILES["large"],  # BERT's init and dropout need lr 1e-3 and 3000 teacher steps
    },
    "large": {
        "train": DistillConfig(steps=2000, batch_size=64, seq_len=256, lr=2e-3, warmup=100, eval_every=200),
        "eval_tokens": 65536, "samples": 32768, "prompt_len": 16, "sample_batch": 2048,
        "context": {"steps": 200, "n_train": 256, "n_test": 64, "batch_size": 16},
        "encoder": {"teacher_steps": 2000, "student_steps": 1500, "batch_size": 64},
    },
}

# The four white-box/black-box runs: (source of the windows, whether the teacher's logits are used)
RUNS = {
    "CE on the corpus": ("corpus", False),
    "logit KD on the corpus": ("corpus", True),
    "sequence-level KD (teacher's text)": ("samples", False),
    "logit KD on the teacher's text": ("samples", True),
}


def temperature_rows(logits: torch.Tensor, temperatures=(0.5, 1.0, 2.0, 4.0, 8.0)) -> list[dict]:
    """How a temperature flattens one distribution: top-1 probability, entropy, tokens holding 90%."""
    rows = []
    for t in temperatures:
        p = soft_targets(logits, t)
        entropy = -(p * p.clamp_min(1e-30).log()).sum().item()
        cum = p.sort(descending=True).values.cumsum(0)
        rows.append({"T": t, "top-1 p": p.max().item(), "entropy (nats)": entropy,
                     "tokens for 90%": int((cum < 0.9).sum()) + 1})
    return rows


def gradient_norms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   temperatures=(1.0, 2.0, 4.0, 8.0)) -> list[dict]:
    """|d loss / d student logits| of the soft term with and without the T^2 factor, at each T."""
    rows = []
    for t in temperatures:
        z = student_logits.detach().float().clone().requires_grad_()
        kl = distillation_loss(z, teacher_logits.float(), None, temperature=t, alpha=0.0).kl
        (grad,) = torch.autograd.grad(kl, z)
        rows.append({"T": t, "grad norm, KL": grad.norm().item(), "grad norm, T^2 KL": t**2 * grad.norm().item()})
    return rows


def white_box(teacher, tokenizer, profile: dict, *, device=None, progress: bool = True,
              runs: dict = RUNS) -> dict:
    """Train one student per entry of `runs` on the same token budget; returns logs, students, samples."""
    device = device or next(teacher.parameters()).device
    cfg: DistillConfig = profile["train"]
    train_ids, val_ids = token_stream("train", tokenizer), token_stream("validation", tokenizer)
    evalset = make_eval_set(val_ids, cfg.seq_len, profile["eval_tokens"], teacher)
    t0 = time.perf_counter()
    samples = teacher_corpus(teacher, train_ids, profile["samples"], cfg.seq_len, profile["prompt_len"],
                             batch_size=profile["sample_batch"], seed=cfg.seed, progress=progress)
    sample_seconds = time.perf_counter() - t0
    sources = {"corpus": CorpusWindows(train_ids, cfg.batch_size, cfg.seq_len),
               "samples": TeacherSamples(samples, profile["prompt_len"], cfg.batch_size)}
    out = {"runs": {}, "students": {}, "samples": samples, "sample_seconds": sample_seconds, "evalset": evalset}
    for name, (source, use_logits) in runs.items():
        student = new_student(tokenizer, seed=cfg.seed, device=device)
        out["runs"][name] = train_student(student, sources[source], cfg, teacher=teacher if use_logits else None,
                                          evalset=evalset, name=name, progress=progress)
        out["students"][name] = student
        if progress:
            log = out["runs"][name].log[-1]
            print(f"{name}: {out['runs'][name].seconds:.1f} s, val loss {log['val_loss']:.4f}, KL {log['val_kl']:.4f}",
                  flush=True)
    return out


def greedy_vs_sampled(teacher, tokenizer, n: int = 16, seq_len: int = 128, prompt_len: int = 16) -> list[dict]:
    """Repeated 4-grams in the teacher's text: greedy decoding (the seed's) against sampling at T = 1."""
    stream = token_stream("train", tokenizer)
    rows = []
    for label, greedy in (("greedy", True), ("sampled, T = 1", False)):
        seqs = teacher_corpus(teacher, stream, n, seq_len, prompt_len, greedy=greedy, seed=1)
        rows.append({"decoding": label, "repeated 4-grams": repeated_ngrams(seqs, 4, start=prompt_len),
                     "distinct tokens": len(set(seqs[:, prompt_len:].flatten().tolist()))})
    return rows


def storage_bytes(model, linear_bits: float = 16.0, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Bytes to store the model: decoder-block linear weights at `linear_bits` each, everything else fp16."""
    bits = 0.0
    linear_weights = {f"{n}.weight" for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and not n.endswith(skip)}
    for name, p in model.named_parameters():
        bits += p.numel() * (linear_bits if name in linear_weights else 16)
    return int(bits // 8)


def compression_rows(teacher, tokenizer, students: dict, *, calibration: torch.Tensor, protocol=FAST) -> list[dict]:
    """Perplexity and size: the teacher, the teacher quantized (GPTQ 4-bit) or pruned (SparseGPT 2:4),
    and each student, plus the KD student quantized: compression methods side by side."""
    from ..gptq.model import gptq_quantize_model
    from ..prune.model import prune_model
    from ..prune.teach import bits_per_weight

    base = storage_bytes(teacher)
    rows = []

    def add(method: str, chapter: str, model, linear_bits: float = 16.0):
        size = storage_bytes(model, linear_bits)
        rows.append({"model": method, "chapter": chapter, "params": param_count(model), "MB": size / 1e6,
                     "size vs teacher": size / base, "ppl": perplexity(model, tokenizer, protocol).ppl})

    add("teacher (fp16)", "00", teacher)
    gptq = copy.deepcopy(teacher)
    gptq_quantize_model(gptq, calibration, bits=4, group_size=128, progress=False)
    add("teacher, GPTQ 4-bit g128", "03", gptq, bits_per_weight(4, group_size=128))
    pruned = copy.deepcopy(teacher)
    prune_model(pruned, calibration, "sparsegpt", nm="2:4", progress=False)
    add("teacher, SparseGPT 2:4", "07", pruned, bits_per_weight(16, "2:4"))
    for name, student in students.items():
        add(f"student: {name}", "08", student)
    kd = students.get("logit KD on the corpus")
    if kd is not None:
        kd4 = copy.deepcopy(kd)
        gptq_quantize_model(kd4, calibration, bits=4, group_size=128, progress=False)
        add("student (logit KD) + GPTQ 4-bit", "08 + 03", kd4, bits_per_weight(4, group_size=128))
    return rows


def record_distill(name: str | None = None, profile: str = "large", device=None, progress: bool = True,
                   directory=None, part: str = "all", seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    """Run a profile (the large one on a GPU) and save it in data/results/: part "white" (the four students and
    the compression table) to <device>_distill.json, part "extras" (decoding, context distillation, the
    encoder) to <device>_distill_extras.json, part "encoder" (the encoder experiment once per seed in
    `seeds`) to <device>_distill_encoder.json; "all" does all three."""
    from ..core.timing import device_slug
    from ..core.env import choose_device
    from ..lm.models import load_model
    from ..core.results import save_result
    from ..lm.tokens import calibration_batches
    from .encoder import run_encoder_experiment
    from .incontext import context_experiment

    if part not in ("all", "white", "extras", "encoder"):
        raise ValueError(f"part must be 'all', 'white', 'extras' or 'encoder', got {part!r}.")
    device = choose_device(device)
    base = name or ("cpu" if device.type == "cpu" else device_slug()) + "_distill"
    prof = PROFILES[profile]
    cfg = prof["train"]
    teacher, tok = load_model(device=device, dtype=torch.float32)  # bf16 autocast on CUDA, as in training
    command = f"python -m course_lib.bench distill --profile {profile}"
    if part in ("all", "white"):
        t0 = time.perf_counter()
        wb = white_box(teacher, tok, prof, device=device, progress=progress)
        calib = calibration_batches(tok, 32, 256).to(device)
        rows = compression_rows(teacher, tok, wb["students"], calibration=calib)
        summary = {
            "profile": profile, "train": dict(cfg.__dict__), "tokens_per_run": cfg.tokens,
            "student_params": param_count(next(iter(wb["students"].values()))), "teacher_params": param_count(teacher),
            "student_spec": dict(STUDENT.__dict__), "samples": list(wb["samples"].shape),
            "sample_seconds": wb["sample_seconds"], "curves": {n: r.log for n, r in wb["runs"].items()},
            "run_seconds": {n: r.seconds for n, r in wb["runs"].items()},
            "teacher_val": evaluate(teacher, wb["evalset"]), "seconds": time.perf_counter() - t0,
        }
        path = save_result(base, rows, summary=summary, directory=directory, command=f"{command} --part white",
                           description=(f"Chapter 08: students of {summary['student_params']:,} parameters trained "
                                        f"{cfg.steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens four ways; rows: "
                                        f"perplexity ({FAST.describe()}) and size of each compressed model."))
        print(f"wrote {path}", flush=True)
    if part in ("all", "extras"):
        t0 = time.perf_counter()
        ctx = context_experiment(teacher, tok, progress=progress, **prof["context"])
        enc = run_encoder_experiment(tok, device=device, progress=progress, **prof["encoder"])
        rows = [{"experiment": "context", "model": k, **v} for k, v in ctx["rows"].items()]
        rows += [{"experiment": "encoder", **r} for r in enc["rows"]]
        summary = {"profile": profile, "decoding": greedy_vs_sampled(teacher, tok),
                   "context": {"losses": ctx["losses"], "settings": prof["context"], "seconds": ctx["seconds"]},
                   "encoder": {"task": enc["task"], "seconds": enc["seconds"], "settings": _jsonable(prof["encoder"]),
                               "logs": {n: r.log for n, r in enc["runs"].items()}},
                   "seconds": time.perf_counter() - t0}
        path = save_result(f"{base}_extras", rows, summary=summary, directory=directory, command=f"{command} --part extras",
                           description="Chapter 08: greedy vs sampled teacher text, context distillation (held-out "
                                       "CE and KL to the prefixed teacher), and the encoder (test accuracy, passages/s).")
        print(f"wrote {path}", flush=True)
    if part in ("all", "encoder"):
        rows = []
        for seed in seeds:  # a new task shuffle, initialisation and batch order per seed
            enc = run_encoder_experiment(tok, device=device, progress=progress, **{**prof["encoder"], "seed": seed})
            rows += [{"seed": seed, **r} for r in enc["rows"]]
        path = save_result(f"{base}_encoder", rows, directory=directory, command=f"{command} --part encoder",
                           summary={"profile": profile, "seeds": list(seeds), "settings": _jsonable(prof["encoder"]),
                                    "task": enc["task"]},
                           description="Chapter 08: the encoder experiment (teacher, then three half-depth students) "
                                       "once per seed: test accuracy and passages/s.")
        print(f"wrote {path}", flush=True)


def _jsonable(settings: dict) -> dict:
    """Profile settings for a result file (dataclasses such as EncoderSpec as dicts)."""
    from dataclasses import asdict, is_dataclass

    return {k: asdict(v) if is_dataclass(v) else v for k, v in settings.items()}
