"""The bundled model's evaluation record: perplexity protocols and lm-eval scores, GPU bf16 and CPU fp32.

    python -m course_lib.bench model-eval [--name h200_course_model_eval]

Chapter 03 reads it (the float model's scores beside its quantized ones).
"""

from __future__ import annotations

from ..core.env import require_cuda
from ..core.results import save_result
from ..core.timing import device_slug


def record_model_eval(name: str | None = None) -> None:
    """The bundled model's perplexities and lm-eval scores in bf16 on this GPU and in fp32 on its CPU."""
    import time

    import torch

    from ..lm.eval_tasks import evaluate
    from ..lm.models import load_model
    from ..lm.perplexity import FAST, FULL, FULL_VALIDATION, perplexity

    require_cuda("The model evaluation record")
    name = name or f"{device_slug()}_course_model_eval"
    rows = []
    for device, dtype in (("cuda", torch.bfloat16), ("cpu", torch.float32)):
        model, tokenizer = load_model(device=device, dtype=dtype)
        row = {"device": device, "dtype": str(dtype).replace("torch.", "")}
        start = time.perf_counter()
        for label, protocol in (("fast", FAST), ("full_test", FULL), ("full_validation", FULL_VALIDATION)):
            row[f"ppl_{label}"] = perplexity(model, tokenizer, protocol).ppl
        row["ppl_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        row.update(evaluate(model, tokenizer, batch_size=64))
        row["lm_eval_seconds"] = time.perf_counter() - start
        rows.append(row)
    path = save_result(name, rows, description="bundled course model: perplexity protocols (course_lib.lm.perplexity) "
                       "and the local lm-eval tasks (course_lib.lm.eval_tasks), whole",
                       summary={"cpu_threads": torch.get_num_threads()},
                       command=f"python -m course_lib.bench model-eval --name {name}")
    print(f"wrote {path}")
    for row in rows:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
