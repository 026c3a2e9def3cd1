"""bitsandbytes measured: memory, perplexity and time per token of 16-bit vs int8 vs NF4/FP4, and
QLoRA vs LoRA vs full fine-tuning, with memory.

    python -m course_lib.bench bnb [--device cuda|cpu] [--part all|speed|finetune] [--quick] [--name NAME]

speed     for the bundled model, SmolLM2-135M and (CUDA only) a Llama-shaped 1B model with random weights:
          weight memory, perplexity (real models), prefill time for 512 tokens and decode time per token
          (batch 1, KV cache, median of repeated runs), for the 16-bit model, LLM.int8() (threshold 6 and 0),
          NF4 with double quantization and FP4, every variant loaded by transformers' BitsAndBytesConfig.
finetune  QLoRA, 16-bit LoRA and full fine-tuning on the held-out work (course_lib.bnb.qlora): held-out
          perplexity before and after, peak memory (CUDA allocator) and the measured memory parts.
"""

from __future__ import annotations

import statistics
import tempfile
import time

NAME = "bnb"
DESCRIPTION = ("bitsandbytes: weight memory, perplexity, prefill and decode time of 16-bit vs LLM.int8() vs NF4/FP4 "
               "(transformers' BitsAndBytesConfig); QLoRA vs LoRA vs full fine-tuning with memory")
PARTS = ("all", "speed", "finetune")
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048)


def _decode_times(model, device, *, prompt: int = 64, new: int = 32, reps: int = 5) -> tuple[float, float]:
    """(seconds per decoded token, seconds for a 512-token prefill): medians over `reps` runs, batch 1."""
    import torch

    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, prompt), generator=g).to(device)
    long = torch.randint(0, vocab, (1, 512), generator=g).to(device)

    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    def decode():
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            sync()
            t0 = time.perf_counter()
            for _ in range(new):
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            sync()
            return (time.perf_counter() - t0) / new

    def prefill():
        with torch.no_grad():
            sync()
            t0 = time.perf_counter()
            model(input_ids=long, use_cache=False)
            sync()
            return time.perf_counter() - t0

    decode(), prefill()  # warm-up
    return statistics.median(decode() for _ in range(reps)), statistics.median(prefill() for _ in range(reps))


def _variants(device) -> dict[str, dict | None]:
    """Name -> bnb_config kwargs (None: the unquantized model)."""
    import torch

    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return {"16-bit" if dtype == torch.bfloat16 else "float32": None,
            "int8 (threshold 6)": dict(kind="int8", threshold=6.0),
            "int8 (threshold 0)": dict(kind="int8", threshold=0.0),
            "nf4 + double quant": dict(kind="nf4", double_quant=True, compute_dtype=dtype),
            "fp4": dict(kind="fp4", double_quant=False, compute_dtype=dtype)}


def speed_rows(device: str = "cuda", *, quick: bool = False) -> list[dict]:
    import torch

    from ..lm import models
    from ..lm.perplexity import Protocol, perplexity
    from .library import load_quantized

    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    protocol = Protocol(max_tokens=2048 if quick or not cuda else 16384)
    names = ["course-model", "smollm2-135m"]
    tmp = None
    if cuda and not quick:
        from transformers import LlamaConfig, LlamaForCausalLM

        tmp = tempfile.TemporaryDirectory()
        torch.manual_seed(0)
        with torch.device("cuda"):
            big = LlamaForCausalLM(LlamaConfig(**LLAMA_1B)).to(torch.bfloat16)
        big.save_pretrained(tmp.name)
        del big
        names.append(tmp.name)
    rows = []
    for name in names:
        label = "llama-1b-shape (random)" if name == (tmp.name if tmp else None) else name
        real = not label.startswith("llama")
        tok = models.load_tokenizer(name) if real else None
        for variant, kwargs in _variants(device).items():
            torch.cuda.empty_cache() if cuda else None
            if kwargs is None:
                from transformers import AutoModelForCausalLM

                model = AutoModelForCausalLM.from_pretrained(models.model_source(name), dtype=dtype).to(device).eval()
            else:
                kwargs = dict(kwargs)
                model = load_quantized(name, kwargs.pop("kind"), device=device, dtype=dtype, **kwargs)
            per_token, prefill = _decode_times(model, device, reps=3 if quick else 7)
            row = {"model": label, "variant": variant, "weights MB": model.get_memory_footprint() / 1e6,
                   "decode ms/token": 1e3 * per_token, "prefill 512 ms": 1e3 * prefill}
            if real and (cuda or name == "course-model"):  # bitsandbytes' int8 on a CPU is too slow for SmolLM2's
                row["ppl"] = perplexity(model, tok, protocol).ppl
                row["ppl tokens"] = protocol.max_tokens
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            del model
    for row in rows:  # each variant's time next to its model's unquantized one
        base = next(r for r in rows if r["model"] == row["model"] and r["variant"] in ("16-bit", "float32"))
        row["decode vs base"] = row["decode ms/token"] / base["decode ms/token"]
        row["prefill vs base"] = row["prefill 512 ms"] / base["prefill 512 ms"]
    if tmp:
        tmp.cleanup()
    return rows


def finetune_rows(device: str = "cuda", *, quick: bool = False, lr_mult: float = 1.0) -> list[dict]:
    """Each method on each model, at the plan's learning rate times `lr_mult` (full fine-tuning: a tenth of it)."""
    import torch

    from ..lm import models
    from . import qlora
    from .memory import measure_training_step

    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = []
    plans = {"course-model": dict(steps=200, batch_size=8, seq_len=256, lr=1e-3),
             "smollm2-135m": dict(steps=100, batch_size=8, seq_len=256, lr=2e-4)}
    if quick or not cuda:
        plans = {"course-model": dict(steps=30, batch_size=4, seq_len=128, lr=1e-3)}
    for name, plan in plans.items():
        tok = models.load_tokenizer(name)
        train_ids, heldout = qlora.work_split(tok)
        base, _ = models.load_model(name, device=device, dtype=dtype)
        base_ppl = qlora.heldout_ppl(base, tok, heldout)
        del base
        for method in qlora.METHODS:
            lr = lr_mult * (plan["lr"] if method != "full" else plan["lr"] / 10)
            cfg = qlora.FinetuneConfig(method=method, steps=plan["steps"], batch_size=plan["batch_size"],
                                       seq_len=plan["seq_len"], lr=lr,
                                       optimizer=("paged_adamw8bit" if cuda else "adamw8bit") if method != "full"
                                       else "adamw")
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            model = qlora.prepare(name, cfg, device=device, dtype=dtype)
            batch = train_ids[: cfg.batch_size * cfg.seq_len].reshape(cfg.batch_size, cfg.seq_len).to(device)
            measured = measure_training_step(model, {"input_ids": batch, "labels": batch},
                                             lambda ps, c=cfg: qlora.make_optimizer(ps, c.optimizer, c.lr, device),
                                             device=device)
            run = qlora.train(model, train_ids, cfg, progress=False)
            row = {"model": name, "method": method, "steps": cfg.steps, "batch": cfg.batch_size, "seq": cfg.seq_len,
                   "lr": cfg.lr, "lr mult": lr_mult, "optimizer": cfg.optimizer, "trainable": run.trainable,
                   "base ppl": base_ppl, "held-out ppl": qlora.heldout_ppl(model, tok, heldout),
                   "first loss": statistics.mean(run.losses[:5]), "last loss": statistics.mean(run.losses[-5:]),
                   "s": run.seconds, "peak MB": torch.cuda.max_memory_allocated() / 1e6 if cuda else None}
            row.update({f"{k} MB": v / 1e6 for k, v in measured.items() if isinstance(v, (int, float))
                        and k not in ("loss", "trainable_params") and v is not None})
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            del model
    return rows


def run(device: str = "cuda", *, part: str = "all", quick: bool = False, lr_mult: float = 1.0) -> list[dict]:
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}; got {part!r}.")
    rows = []
    if part in ("all", "speed"):
        rows += [{"kind": "speed", **r} for r in speed_rows(device, quick=quick)]
    if part in ("all", "finetune"):
        rows += [{"kind": "finetune", **r} for r in finetune_rows(device, quick=quick, lr_mult=lr_mult)]
    return rows


def record_bnb(name: str | None = None, device: str = "cuda", *, part: str = "all", quick: bool = False,
               threads: int | None = None, lr_mult: float = 1.0) -> None:
    import torch

    from ..core.env import require_cuda
    from ..core.results import save_result
    from ..core.timing import device_slug

    if device == "cuda":
        require_cuda("The bitsandbytes GPU record")
    if threads:
        torch.set_num_threads(threads)
    name = name or (f"{device_slug() if device == 'cuda' else 'cpu'}_bnb" + ("" if part == "all" else f"_{part}")
                    + ("" if lr_mult == 1 else f"_lr{lr_mult:g}"))
    rows = run(device, part=part, quick=quick, lr_mult=lr_mult)
    path = save_result(name, rows, description=DESCRIPTION,
                       summary={"quick": quick, "cpu_threads": torch.get_num_threads(), "part": part},
                       command=f"python -m course_lib.bench bnb --part {part} --device {device} --name {name}"
                               + (" --quick" if quick else "") + (f" --threads {threads}" if threads else "")
                               + ("" if lr_mult == 1 else f" --lr-mult {lr_mult:g}"))
    print(f"wrote {path}")  # the rows were printed as they were measured
