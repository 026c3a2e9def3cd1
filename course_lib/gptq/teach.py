"""Small teaching helpers for chapter 03: the pieces of GPTQ made visible one at a time.

    toy = obs_toy(w, H, step)                       # Optimal Brain Surgeon on two weights
    X = layer_inputs(model, "model.layers.0.mlp.down_proj", calib)    # (tokens, in_features)
    walk = gptq_walk(W, hessian(X), bits=3)         # column by column, recording the error
    blocksize_sweep / damp_sweep / act_order_rows   # one measurement per GPTQ knob
    quantize_grid(model, tok, calib, configs)       # FP / RTN / GPTQ (and AWQ, via awq.teach) over a whole model

The objective throughout: for a linear layer y = W x and calibration inputs x_t (rows of X),
    E(Q) = (1/n) sum_t ||(Q - W) x_t||^2 = 1/2 tr(D H D^T),   D = Q - W,   H = 2/n X^T X.
gptq_walk is the textbook algorithm with an explicit inverse Hessian, column by column, no
blocks and no Cholesky; course_lib.gptq.gptq_quantize_weight is the same algorithm done fast.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.env import quiet_loggers
from ..quant.affine import compute_scale_zero, qrange, quantize_blocks
from .core import gptq_quantize_weight

UPDATES = ("obs", "none", "seed")  # GPTQ's H^-1 update, plain rounding, seed 003's update with H


def quadratic_loss(delta: torch.Tensor, H: torch.Tensor) -> float:
    """1/2 delta^T H delta for a vector, or 1/2 tr(D H D^T) summed over the rows of a matrix D."""
    D = delta.reshape(-1, H.shape[0]).double()
    return 0.5 * ((D @ H.double()) * D).sum().item()


def obs_update(w: torch.Tensor, H: torch.Tensor, q: int, value: float) -> torch.Tensor:
    """OBS: set weight q to `value` and move the others to minimise 1/2 d^T H d (d = change of w).
    delta = -(w_q - value) / [H^-1]_qq * H^-1[:, q]; the new vector has exactly `value` at q."""
    Hinv = torch.linalg.inv(H.double())
    delta = -(w[q].double() - value) / Hinv[q, q] * Hinv[:, q]
    return (w.double() + delta).to(w.dtype)


@dataclass
class OBSToy:
    """Two weights, a quadratic loss 1/2 d^T H d, weight q rounded to a grid of step `step`."""

    w: torch.Tensor
    H: torch.Tensor
    step: float
    q: int
    w_naive: torch.Tensor   # w with only w_q rounded
    w_obs: torch.Tensor     # w_q rounded, the other weight compensated (OBS)
    loss_naive: float
    loss_obs: float


def obs_toy(w, H, step: float = 1.0, q: int = 0) -> OBSToy:
    """Round w[q] to the nearest multiple of `step`, naively and with the OBS update of the other weight."""
    w, H = torch.as_tensor(w, dtype=torch.float64), torch.as_tensor(H, dtype=torch.float64)
    if w.shape != (2,) or H.shape != (2, 2) or not torch.allclose(H, H.T) or torch.linalg.eigvalsh(H).min() <= 0:
        raise ValueError("obs_toy needs w of shape (2,) and a symmetric positive-definite 2x2 H.")
    value = step * torch.round(w[q] / step).item()
    naive = w.clone()
    naive[q] = value
    obs = obs_update(w, H, q, value)
    return OBSToy(w, H, step, q, naive, obs, quadratic_loss(naive - w, H), quadratic_loss(obs - w, H))


def plot_obs_toy(toy: OBSToy, ax) -> None:
    """Contours of the loss around w, the grid line w_q = value, and the two rounded points."""
    span = 2.5 * max((toy.w_obs - toy.w).abs().max().item(), (toy.w_naive - toy.w).abs().max().item())
    a, b = torch.meshgrid(torch.linspace(-span, span, 201), torch.linspace(-span, span, 201), indexing="xy")
    d = torch.stack([a, b], dim=-1).double()
    loss = 0.5 * torch.einsum("...i,ij,...j->...", d, toy.H, d)
    levels = sorted({toy.loss_obs, toy.loss_naive, *(toy.loss_naive * f for f in (0.05, 0.4, 2.0, 4.0))})
    ax.contour(a + toy.w[0], b + toy.w[1], loss, levels=levels, colors="0.6", linewidths=0.8)
    value = toy.w_naive[toy.q].item()
    (ax.axvline if toy.q == 0 else ax.axhline)(value, color="gray", ls=":", label=f"w{toy.q} = {value:g} (grid)")
    ax.plot(*toy.w.tolist(), "ko", label="original w")
    ax.plot(*toy.w_naive.tolist(), "s", color="C3", label=f"round w{toy.q} only: loss {toy.loss_naive:.3g}")
    ax.plot(*toy.w_obs.tolist(), "D", color="C0", label=f"OBS update: loss {toy.loss_obs:.3g}")
    ax.set(xlabel="w0", ylabel="w1", aspect="equal")
    ax.legend(fontsize=8)


@torch.no_grad()
def layer_inputs(model, layer_name, calibration: torch.Tensor, batch_size: int = 16):
    """The inputs x_t that a layer sees when the model runs on `calibration`: (tokens, in) float32.
    With a list of names: {name: inputs} from one pass over the calibration set."""
    names = [layer_name] if isinstance(layer_name, str) else list(layer_name)
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def hook(name):
        return lambda m, args, out: rows[name].append(args[0].reshape(-1, args[0].shape[-1]).float())

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        for i in range(0, calibration.shape[0], batch_size):
            model(input_ids=calibration[i:i + batch_size].to(model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    out = {n: torch.cat(r) for n, r in rows.items()}
    return out[layer_name] if isinstance(layer_name, str) else out


def hessian(X: torch.Tensor) -> torch.Tensor:
    """H = 2/n X^T X for inputs X (n tokens, in_features): the Hessian of E(Q) with respect to each row of Q."""
    X = X.reshape(-1, X.shape[-1]).float()
    return 2 / X.shape[0] * X.T @ X


def output_error(W: torch.Tensor, Q: torch.Tensor, X: torch.Tensor) -> float:
    """(1/n) sum_t ||(Q - W) x_t||^2: the mean squared error the quantized layer adds to its outputs."""
    return ((X.double() @ (Q.double() - W.double()).T) ** 2).sum().item() / X.shape[0]


@dataclass
class Walk:
    """What gptq_walk recorded. cols[k] columns were quantized when running[k] was measured."""

    Q: torch.Tensor
    update: str
    cols: list[int] = field(default_factory=list)
    running: list[float] = field(default_factory=list)   # 1/2 tr(D H D^T), D = current W - original W

    @property
    def loss(self) -> float:
        return self.running[-1]


@torch.no_grad()
def gptq_walk(W: torch.Tensor, H: torch.Tensor, bits: int = 4, *, group_size: int | None = None,
              symmetric: bool = True, percdamp: float = 0.01, update: str = "obs", record_every: int = 1) -> Walk:
    """Quantize W (out, in) one column at a time, left to right, recording the layer's output error.

    update="obs": the error of column j, e_j = (w_j - q_j) / [H^-1]_jj, is spread over the columns
      k > j as w_k -= e_j H^-1[j, k]; then j is removed from H^-1 (Gaussian elimination):
      H^-1 <- H^-1 - H^-1[:, j] H^-1[j, :] / H^-1[j, j].  This is GPTQ (H^-1 of H + lambda I).
    update="none": no compensation: plain round-to-nearest with the same grid.
    update="seed": seed 003's pseudo-code, w_k -= (w_j - q_j) H[j, k] / H[j, j], with H, not H^-1.
    The grid (scales) is fixed up front from the original W, per row or per group of `group_size`
    columns, so the three updates differ only in the compensation. running[k] uses the undampened H.
    """
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}.")
    out_f, cols = W.shape
    g = group_size or cols
    if cols % g:
        raise ValueError(f"group_size {group_size} does not divide in_features {cols}.")
    W0 = W.detach().double()
    H = H.detach().double()
    qmin, qmax = qrange(bits, symmetric)
    scale, zero = compute_scale_zero(W0.float().reshape(out_f, cols // g, g), bits, symmetric, gptq_grid=True)
    scale, zero = scale.double().reshape(out_f, -1), zero.double().reshape(out_f, -1)
    damp = percdamp * torch.diag(H).mean()
    Hinv = torch.linalg.inv(H + damp * torch.eye(cols, dtype=H.dtype, device=H.device))
    Wc = W0.clone()
    walk = Walk(Q=W0.clone(), update=update)
    for j in range(cols):
        s, z = scale[:, j // g:j // g + 1], zero[:, j // g:j // g + 1]
        w = Wc[:, j:j + 1]
        q = s * (quantize_blocks(w, s, z, qmin, qmax) - z)
        if update == "obs":
            Wc[:, j + 1:] -= (w - q) / Hinv[j, j] * Hinv[j:j + 1, j + 1:]
            Hinv -= Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]
        elif update == "seed":
            Wc[:, j + 1:] -= (w - q) * H[j:j + 1, j + 1:] / H[j, j]
        Wc[:, j:j + 1] = q
        if (j + 1) % record_every == 0 or j + 1 == cols:
            walk.cols.append(j + 1)
            walk.running.append(quadratic_loss(Wc - W0, H))
    walk.Q = Wc.to(W.dtype)
    return walk


def rtn_result(W: torch.Tensor, bits: int = 4, group_size: int = 128):
    """A GPTQResult holding plain RTN codes (fp16 scales, symmetric), to build a QuantLinear without a Hessian."""
    from .core import GPTQResult, group_params

    out_f, cols = W.shape
    blocks = W.detach().float().reshape(out_f, cols // group_size, group_size)
    scales = torch.stack([group_params(blocks[:, k], bits, True, torch.float16)[0][:, 0] for k in range(blocks.shape[1])], 1)
    qmin, qmax = qrange(bits, True)
    codes = quantize_blocks(blocks, scales[..., None], 0.0, qmin, qmax)
    return GPTQResult(qweight_float=(codes * scales[..., None]).reshape(out_f, cols).to(W.dtype),
                      codes=codes.reshape(out_f, cols).to(torch.int8), scales=scales, zeros=torch.zeros_like(scales),
                      g_idx=(torch.arange(cols, device=W.device) // group_size).to(torch.int32), perm=None,
                      loss=float("nan"), damp=0.0, bits=bits, group_size=group_size, symmetric=True)


def timed(fn, *args, repeats: int = 3, **kwargs):
    """(result of the last call, best wall time in seconds over `repeats` calls)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t)
    return out, best


def blocksize_sweep(W: torch.Tensor, H: torch.Tensor, blocksizes=(1, 8, 32, 128), repeats: int = 3, **kw) -> list[dict]:
    """GPTQ at each lazy-batch block size: identical weights (up to float rounding), different time."""
    rows, ref = [], None
    for b in blocksizes:
        res, sec = timed(gptq_quantize_weight, W, H, blocksize=b, repeats=repeats, **kw)
        ref = res if ref is None else ref
        rows.append({"blocksize": b, "loss": res.loss, "codes equal to first": (res.codes == ref.codes).float().mean().item(),
                     "max |dQ|": (res.qweight_float - ref.qweight_float).abs().max().item(), "ms": 1e3 * sec})
    return rows


def damp_sweep(W: torch.Tensor, X_cal: torch.Tensor, X_val: torch.Tensor, percdamps=(1e-4, 1e-3, 1e-2, 0.1, 1.0),
               **kw) -> list[dict]:
    """GPTQ with each percdamp on calibration inputs X_cal; output error on X_cal and on held-out X_val."""
    H = hessian(X_cal)
    rows = []
    for p in percdamps:
        Q = gptq_quantize_weight(W, H, percdamp=p, **kw).qweight_float
        rows.append({"percdamp": p, "calibration error": output_error(W, Q, X_cal),
                     "held-out error": output_error(W, Q, X_val)})
    return rows


def diag_spread(H: torch.Tensor) -> float:
    """max / median of diag(H): how unevenly the layer's inputs are used (1 = perfectly even)."""
    d = torch.diag(H)
    return (d.max() / d.median()).item()


def act_order_rows(model, layer_names, calibration: torch.Tensor, held_out: torch.Tensor, **kw) -> list[dict]:
    """For each layer: diag(H) spread, and the output error of GPTQ with act-order relative to the natural
    column order, on the calibration inputs and on the inputs from the `held_out` token windows."""
    X_cal = layer_inputs(model, list(layer_names), calibration)
    X_val = layer_inputs(model, list(layer_names), held_out)
    rows = []
    for name in layer_names:
        W = model.get_submodule(name).weight.detach().float()
        H = hessian(X_cal[name])
        Q = {ao: gptq_quantize_weight(W, H, act_order=ao, **kw).qweight_float for ao in (False, True)}
        ratio = {k: output_error(W, Q[True], X[name]) / output_error(W, Q[False], X[name])
                 for k, X in (("calibration", X_cal), ("held-out", X_val))}
        rows.append({"layer": name, "diag(H) max/median": diag_spread(H),
                     "act-order / natural, calibration": ratio["calibration"],
                     "act-order / natural, held-out": ratio["held-out"]})
    return rows


def calibration_sets(tokenizer, n_samples: int, seq_len: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Calibration windows from three sources, each (n_samples, seq_len) token ids:
    the calibration split (a Shakespeare play), Milton's Paradise Lost (train split), uniform random tokens."""
    from ..lm.corpus import list_documents
    from ..lm.tokens import calibration_batches

    gen = torch.Generator().manual_seed(seed)
    milton = dict(list_documents("train"))["Paradise Lost"]
    ids = torch.tensor(tokenizer(milton)["input_ids"])
    starts = torch.randint(0, len(ids) - seq_len, (n_samples,), generator=gen).tolist()
    return {"Shakespeare (calibration split)": calibration_batches(tokenizer, n_samples, seq_len, seed=seed),
            "Milton (Paradise Lost)": torch.stack([ids[s:s + seq_len] for s in starts]),
            "random tokens": torch.randint(0, len(tokenizer), (n_samples, seq_len), generator=gen)}


@dataclass(frozen=True)
class GridMethod:
    """A quantization method that quantize_grid can run besides RTN and GPTQ (awq.teach adds AWQ).

    quantize(model, calibration, cfg) quantizes the model in place and returns its report; calibration is
    on the model's device. symmetric: the grid when a config doesn't say (AWQ's usual grid has a zero point).
    """

    quantize: Callable
    symmetric: bool = True


def quantize_grid(model, tokenizer, calibration: torch.Tensor, configs, *, protocol=None,
                  lm_eval: bool = False, lm_eval_limit: int | None = None, lm_eval_tasks=("course_nextline",),
                  keep: dict | None = None, methods: dict[str, GridMethod] | None = None,
                  scored: dict[int, float] | None = None) -> list[dict]:
    """Score each config on a fresh copy of `model`. A config: {"method": "FP" | "RTN" | "GPTQ" | a name of
    `methods`, "bits", "group_size" (None = per-channel), "act_order", "symmetric" (default True, or the
    method's own default), "restricted" (RTN and GPTQ, symmetric only: the restricted grid
    [-(2^(b-1)-1), 2^(b-1)-1] instead of GPTQ's [-2^(b-1), 2^(b-1)-1]; default False), "lm_eval" (default
    True), and whatever keys the extra method reads}. Rows: the config, the grid's name
    (course_lib.quant.grid_name), perplexity, quantization seconds, and with lm_eval=True the lm-eval
    metrics (lm.eval_tasks.evaluate) on the first lm_eval_limit items of each task (None: all of them).
    keep: a dict that receives {row index: (quantized model, the method's report or None)}.
    methods: extra methods by name, e.g. awq.teach's {"AWQ": AWQ_METHOD} (awq.teach.quantize_grid passes it).
    scored: perplexities already measured on the same protocol, by index into `configs`, e.g. {0: ppl_fp}: those
    configs are still quantized (for `keep` and lm-eval) but not scored again."""
    from ..lm.perplexity import FAST, perplexity
    from ..quant.affine import grid_name
    from ..quant.rtn import quantize_model_rtn

    methods = methods or {}
    known = ("FP", "RTN", "GPTQ", *methods)
    rows = []
    for cfg in configs:
        method, bits, g, ao = cfg["method"], cfg.get("bits"), cfg.get("group_size"), cfg.get("act_order", False)
        if method not in known:
            raise ValueError(f"method must be one of {', '.join(map(repr, known))}, got {method!r}"
                             + (" (AWQ: use course_lib.awq.teach.quantize_grid)." if method == "AWQ" else "."))
        sym = cfg.get("symmetric", methods[method].symmetric if method in methods else True)
        restricted = bool(cfg.get("restricted", False))
        if restricted and (method not in ("RTN", "GPTQ") or not sym):
            raise ValueError(f"'restricted' is a symmetric grid for RTN and GPTQ; got it with {method} "
                             f"(symmetric={sym}). Leave it out, or use method 'RTN'/'GPTQ' with symmetric=True.")
        m, report = copy.deepcopy(model), None
        device = m.get_input_embeddings().weight.device  # token ids go where the model is (CPU or CUDA)
        t = time.perf_counter()
        if method == "RTN":
            report = quantize_model_rtn(m, bits, symmetric=sym, granularity="group" if g else "channel", group_size=g,
                                        restricted=restricted, gptq_grid=not restricted)  # by default GPTQ's grid
        elif method == "GPTQ":
            from .model import gptq_quantize_model

            report = gptq_quantize_model(m, calibration.to(device), bits, group_size=g, symmetric=sym, act_order=ao,
                                         restricted=restricted, progress=False)
        elif method in methods:
            report = methods[method].quantize(m, calibration.to(device), {**cfg, "symmetric": sym})
        seconds = time.perf_counter() - t
        row = {"method": method, "bits": bits or 32, "group": f"g{g}" if g else ("channel" if bits else "-"),
               "act-order": ("on" if ao else "off") if method == "GPTQ" else "-",
               "grid": "-" if method == "FP" else grid_name(bits, sym, restricted=restricted,
                                                            gptq_grid=method in ("RTN", "GPTQ") and not restricted),
               "perplexity": (scored or {}).get(len(rows)) or perplexity(m, tokenizer, protocol or FAST).ppl,
               "seconds": seconds}
        if lm_eval and cfg.get("lm_eval", True):
            from ..lm.eval_tasks import evaluate

            with _quiet_stderr("lm_eval"):
                row.update(evaluate(m, tokenizer, tasks=lm_eval_tasks, limit=lm_eval_limit))
        if keep is not None:
            keep[len(rows)] = (m, report)
        rows.append(row)
    return rows


def lm_eval_scores(models: dict, tokenizer, *, tasks=("course_nextline",), limit: int | None = None) -> dict:
    """{label: lm_eval_tasks.evaluate(model, ...)} for each model, with lm-eval's progress bars and log lines
    silenced: the headline metrics of the course tasks on the first `limit` items (None: all)."""
    from ..lm.eval_tasks import evaluate

    with _quiet_stderr("lm_eval"):
        return {label: evaluate(m, tokenizer, tasks=tasks, limit=limit) for label, m in models.items()}


@contextlib.contextmanager
def _quiet_stderr(*loggers: str):
    """Silence progress bars (stderr) and the named loggers' messages below ERROR for the duration."""
    with quiet_loggers(*loggers), contextlib.redirect_stderr(io.StringIO()):
        yield


def layer_bits_per_weight(checkpoint_dir, layer: str) -> dict:
    """Bytes of one quantized layer's tensors in a GPTQ checkpoint (qweight, qzeros, scales, g_idx),
    and the bits per weight they add up to."""
    from pathlib import Path

    from safetensors import safe_open

    sizes, shape = {}, None
    for file in sorted(Path(checkpoint_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for part in ("qweight", "qzeros", "scales", "g_idx"):
                if f"{layer}.{part}" in f.keys():
                    t = f.get_tensor(f"{layer}.{part}")
                    sizes[part] = t.numel() * t.element_size()
                    if part == "scales":
                        shape = t.shape
    if len(sizes) != 4:
        raise ValueError(f"{layer!r} has no qweight/qzeros/scales/g_idx in {checkpoint_dir}: not a GPTQ layer.")
    n_weights = sizes["g_idx"] // 4 * shape[1]  # in_features (one int32 g_idx each) x out_features
    return {**sizes, "weights": n_weights, "bits per weight": 8 * sum(sizes.values()) / n_weights}


def load_with_config(checkpoint_dir, quantization_config=None):
    """from_pretrained(checkpoint_dir, quantization_config=...) on CPU in float32, capturing what it prints
    and warns (GPTQModel logs its kernel choice to stdout); returns (model, list of warning messages)."""
    import warnings

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its log lines go to the real stderr, not through redirect_stderr
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("always")
            # quantization_config=None must not be passed: transformers would then skip quantization altogether
            # and load plain nn.Linear layers without weights
            kwargs = {} if quantization_config is None else {"quantization_config": quantization_config}
            model = AutoModelForCausalLM.from_pretrained(str(checkpoint_dir), dtype=torch.float32, device_map="cpu",
                                                         **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval(), [str(w.message) for w in caught]
