"""Issue 28: the Hopper kernel's scores-ahead switch (FlashAttention-3's intra-warpgroup overlap) against the same
kernel without it, and both against SDPA cuDNN, timed in alternation twice (the two rounds give the noise).
Writes $OUT/h200_attention_ahead_sweep.json. Run from the repository root with PYTHONPATH=$PWD."""
import os
import time
from pathlib import Path

import torch

from course_lib.attention.bench import _runner
from course_lib.attention.triton_hopper import CONFIGS, flash_attention_hopper
from course_lib.core.results import save_result
from course_lib.core.timing import median_time

dev = torch.device("cuda")
t0 = time.time()
rows = []
for d in (128, 64):
    for causal in (True, False):
        for T in (4096, 16384):
            B, H = 16384 // T, 2048 // d
            q, k, v = (torch.randn(B, H, T, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
            fl = 4 * B * H * T * T * d * (0.5 if causal else 1.0)
            base = CONFIGS[d, causal]
            cands = {"cudnn": None, "base": base, "ahead": base._replace(ahead=True)}
            for bm, bn, w, s in ((128, 64, 8, 2), (128, 128, 8, 2), (64, 64, 4, 2), (128, 64, 4, 3)):
                cands[f"ahead {bm}x{bn} w{w} s{s}"] = base._replace(block_m=bm, block_n=bn, warps=w, stages=s,
                                                                     ahead=True)
            res = {name: [] for name in cands}
            for rnd in range(2):
                for name, cfg in cands.items():
                    run = _runner("sdpa cudnn", causal) if cfg is None else (
                        lambda q, k, v, c=cfg: flash_attention_hopper(q, k, v, causal=causal, config=c))
                    fn = (lambda r=run: r(q, k, v))
                    try:
                        fn()
                        res[name].append(fl / median_time(fn, dev, reps=15, warmup=3) / 1e12)
                    except Exception as e:
                        res[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            for name, v_ in res.items():
                row = {"head_dim": d, "causal": causal, "seq_len": T, "variant": name,
                       "config": list(cands[name]) if cands[name] else None}
                if isinstance(v_, list) and v_:
                    row.update(tflops=sum(v_) / len(v_), rounds=v_)
                else:
                    row["error"] = v_
                rows.append(row)
                print(d, causal, T, name.ljust(26), [round(x) for x in v_] if isinstance(v_, list) else v_, flush=True)
            del q, k, v
save_result("h200_attention_ahead_sweep", rows,
            description="issue 28: the Hopper forward with and without the scores of the next key block issued "
                        "before the softmax of the current one, beside SDPA cuDNN; TFLOP/s of two rounds in "
                        "alternation (medians of 15 calls each), bf16, 16k tokens per point, hidden 2048",
            command="PYTHONPATH=$PWD python3 tools/attention_ahead_sweep.py", directory=Path(os.environ["OUT"]))
print(f"done in {time.time() - t0:.0f} s")
