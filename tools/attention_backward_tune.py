"""Issue 28: the tuning sweep of the Triton backward's block shapes on a GPU (head_dim 128, or D=64 in the
environment, 4k tokens); output in data/results/h200_attention_backward_tune[_d64].log. Run from the repository root: PYTHONPATH=$PWD python3 tools/attention_backward_tune.py"""
import os
import time

import torch

import course_lib.attention.triton_train as tt
from course_lib.core.timing import median_time
dev = torch.device("cuda"); t0 = time.time()
T, d = 4096, int(os.environ.get("D", 128))
B, H = 16384 // T, 2048 // d
q, k, v, do = (torch.randn(B, H, T, d, device=dev, dtype=torch.bfloat16) for _ in range(4))
base = tt._blocks
for causal in (True, False):
    o, lse = tt.flash_forward_lse(q, k, v, causal)
    fl = 2.5 * 4 * B * H * T * T * d * (0.5 if causal else 1.0)
    for dkdv in ((64, 64, 8, 2), (32, 128, 4, 2), (32, 128, 4, 3), (64, 128, 8, 2), (64, 128, 8, 3), (32, 128, 8, 2), (64, 128, 4, 2)):
        for dq in ((64, 64, 8, 2), (128, 32, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 2)):
            if time.time() - t0 > 100: break
            tt._blocks = lambda dd, a=dkdv, b_=dq: {**base(dd), "dkdv": a, "dq": b_}
            try:
                ms = 1e3 * median_time(lambda: tt.flash_backward(do, q, k, v, o, lse, causal), dev, reps=8, warmup=2)
                print(causal, dkdv, dq, f"{ms:.3f} ms {fl / ms / 1e9:.0f} TFLOP/s", flush=True)
            except Exception as e:
                print(causal, dkdv, dq, "error", str(e)[:80], flush=True)
print(f"done {time.time() - t0:.0f} s")
