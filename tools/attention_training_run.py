"""Issue 28: a short training run of the bundled model on the GPU, SDPA's attention against the course's Triton
kernels (forward and backward), same initial weights and batches, bf16 autocast. Writes
$OUT/h200_attention_training_run.json. Run from the repository root with PYTHONPATH=$PWD."""
import os
from pathlib import Path

from course_lib.attention.training import compare_training
from course_lib.core.results import save_result

STEPS, BATCH, SEQ, LR = 150, 16, 256, 3e-4
run = compare_training(steps=STEPS, batch=BATCH, seq_len=SEQ, lr=LR, device="cuda")
rows = [{"step": i, "sdpa": a, "course": b} for i, (a, b) in enumerate(zip(run["sdpa"], run["course"]))]
summary = {k: run[k] for k in ("max_rel_diff", "ms_per_step", "device", "attention")}
summary.update(steps=STEPS, batch=BATCH, seq_len=SEQ, lr=LR)
print(summary, rows[0], rows[-1])
save_result("h200_attention_training_run", rows, summary=summary,
            description="the bundled model trained twice from one initialisation on the same batches (AdamW, bf16 "
                        "autocast): SDPA's attention against the course's Triton forward and backward; loss per step",
            command="PYTHONPATH=$PWD python3 tools/attention_training_run.py", directory=Path(os.environ["OUT"]))
