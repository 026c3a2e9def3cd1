"""Issue 28, first GPU check of the Triton backward: gradients against float32 SDPA (with SDPA math in 16 bits as
the yardstick), then a first timing against SDPA flash and cuDNN, forward and backward. Writes $OUT/h200_attention_backward_first.json."""
import os, time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from course_lib.attention.triton_train import flash_attention_train, flash_forward_lse, flash_backward
from course_lib.core.timing import median_time

t0 = time.time()
dev = torch.device("cuda")
out_rows = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "correctness": [], "timing": []}

def sdpa_ref(q, k, v, causal, backend=SDPBackend.MATH):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    if causal:
        tq, tk = q.shape[2], k.shape[2]
        i = torch.arange(tq, device=q.device)[:, None] + (tk - tq); j = torch.arange(tk, device=q.device)[None, :]
        mask = j <= i
        with sdpa_kernel(backend):
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return torch.nan_to_num(o)
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v)

cases = [(torch.bfloat16, 2, 8, 2, 1000, 1000, True, 128), (torch.bfloat16, 1, 8, 8, 777, 1024, True, 64),
         (torch.float16, 2, 4, 1, 513, 513, False, 128), (torch.float16, 1, 4, 4, 300, 200, True, 64),
         (torch.bfloat16, 1, 16, 4, 2048, 2048, False, 64)]
for dtype, b, h, hkv, tq, tk, causal, d in cases:
    g = torch.Generator(device=dev).manual_seed(tq)
    q = torch.randn(b, h, tq, d, device=dev, generator=g, dtype=dtype)
    k, v = (torch.randn(b, hkv, tk, d, device=dev, generator=g, dtype=dtype) for _ in range(2))
    do = torch.randn(b, h, tq, d, device=dev, generator=g, dtype=dtype)
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    o = flash_attention_train(qs, ks, vs, causal=causal); o.backward(do)
    qr, kr, vr = (t.float().requires_grad_() for t in (q, k, v))
    r = sdpa_ref(qr, kr, vr, causal); r.backward(do.float())
    # the same computation in 16 bits by SDPA's math backend: the error a 16-bit reference itself makes
    q6, k6, v6 = (t.clone().requires_grad_() for t in (q, k, v))
    r6 = sdpa_ref(q6, k6, v6, causal); r6.backward(do)
    rel = lambda a, b_: ((a.float() - b_).abs().max() / b_.abs().max()).item()
    row = {"case": [str(dtype).split(".")[1], b, h, hkv, tq, tk, causal, d],
           "course": [rel(o, r), rel(qs.grad, qr.grad), rel(ks.grad, kr.grad), rel(vs.grad, vr.grad)],
           "sdpa math 16-bit": [rel(r6, r), rel(q6.grad, qr.grad), rel(k6.grad, kr.grad), rel(v6.grad, vr.grad)],
           "nan": bool(any(t.isnan().any() for t in (o, qs.grad, ks.grad, vs.grad)))}
    out_rows["correctness"].append(row)
    print(row, flush=True)
print(f"correctness done at {time.time() - t0:.0f} s", flush=True)

PEAK = 989.4
for d in (128, 64):
    for T in (4096, 16384, 1024):
        for causal in (True, False):
            if time.time() - t0 > float(os.environ.get("BUDGET", 150)):
                break
            B, H = 16384 // T, 2048 // d
            q, k, v, do = (torch.randn(B, H, T, d, device=dev, dtype=torch.bfloat16) for _ in range(4))
            fl = 4 * B * H * T * T * d * (0.5 if causal else 1.0)
            res = {"T": T, "d": d, "causal": causal}
            o, lse = flash_forward_lse(q, k, v, causal)
            res["course fwd ms"] = 1e3 * median_time(lambda: flash_forward_lse(q, k, v, causal), dev, reps=10, warmup=2)
            res["course bwd ms"] = 1e3 * median_time(lambda: flash_backward(do, q, k, v, o, lse, causal), dev, reps=10, warmup=2)
            for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
                def fwd():
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                def fb():
                    fwd().backward(do)
                try:
                    f = median_time(fwd, dev, reps=10, warmup=2)
                    fbt = median_time(fb, dev, reps=10, warmup=2)
                    res[f"{name} fwd ms"], res[f"{name} bwd ms"] = 1e3 * f, 1e3 * (fbt - f)
                except Exception as e:
                    res[f"{name} error"] = str(e)[:100]
            for key in list(res):
                if key.endswith("fwd ms"):
                    res[key.replace("ms", "TFLOP/s")] = fl / (res[key] / 1e3) / 1e12
                if key.endswith("bwd ms"):
                    res[key.replace("ms", "TFLOP/s")] = 2.5 * fl / (res[key] / 1e3) / 1e12
            out_rows["timing"].append(res)
            print({k_: (round(v_, 3) if isinstance(v_, float) else v_) for k_, v_ in res.items()}, flush=True)
print(f"done at {time.time() - t0:.0f} s")
from pathlib import Path

from course_lib.core.results import load_result, save_result

old = load_result("h200_attention_backward_first")   # its description says what the rows are
save_result("h200_attention_backward_first", [{"kind": "correctness", **r} for r in out_rows["correctness"]]
            + [{"kind": "timing", **r} for r in out_rows["timing"]], description=old.description,
            command=old.command, directory=Path(os.environ.get("OUT", "/tmp")))
