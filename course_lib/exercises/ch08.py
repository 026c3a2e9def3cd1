"""Checks for chapter 08.

Warm-ups (formulas, checked on a few fixed cases): ``check_soften`` (softmax(z / T)), ``check_kd_gradient`` (the
gradient at one position), ``check_student_params`` (a Llama student's parameter count).

Exercises that implement the chapter's loss on a language model's (batch, length, vocabulary) logits:

1. ``check_kd_loss``: alpha * CE + (1 - alpha) * T^2 * KL(p_T || p_S) with the label shift (position i predicts
   token i + 1), the padding mask and a prompt mask (only response tokens are scored), averaged over scored tokens.
   Compared with ``course_lib.distill.distillation_loss`` on ``next_token_labels`` with the prompt ignored.
2. ``check_kd_grad``: the same loss's gradient with respect to the student's logits, (B, L, V), written out by hand
   (what ``loss.backward()`` gives the student). Compared with autograd through ``distillation_loss``.

Both run the learner's function on random logits (fixed seeds, several shapes, temperatures and alphas) plus edge
cases (a row with nothing to score, alpha 0 and 1, T = 1, a student equal to the teacher up to a constant, logits
large enough to overflow a naive exp). After a wrong attempt, a diagnosis recomputes the usual mistakes (no label
shift, the padding mask one position off, a mean over rows or over the batch instead of over tokens, T instead of
T^2, ...) and names the one that matches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..distill.loss import IGNORE_INDEX, distillation_loss, next_token_labels
from . import check_cases, check_tensor_cases


class Vector(tuple):
    """A 1-D answer (tensor, list) that compares entry by entry, with a tolerance relative to its largest entry."""

    def __new__(cls, value):
        t = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value)
        if t.dim() != 1:
            raise TypeError(f"return a 1-D tensor (one number per logit), got shape {tuple(t.shape)}")
        return super().__new__(cls, (float(x) for x in t.double().cpu()))

    def __eq__(self, other) -> bool:
        if len(other) != len(self):
            return False
        scale = max((abs(x) for x in self), default=0.0)
        return all(math.isclose(a, float(b), rel_tol=1e-4, abs_tol=1e-5 * scale + 1e-12) for a, b in zip(self, other))

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return "[" + ", ".join(f"{x:.4g}" for x in self) + "]"


LOGITS = [torch.tensor([2.0, 1.0, 0.0, -1.0]), torch.tensor([5.0, -2.0, 0.5, 3.0, 1.0]),
          torch.tensor([0.1, 0.2, -0.3]), torch.tensor([10.0, 9.0, -4.0, 0.0, 2.0, 7.5])]


def check_soften(fn) -> bool:
    """fn(logits, T) -> softmax(logits / T) of a 1-D tensor of logits: the temperature-T soft labels."""
    cases = [((z, T), Vector(torch.softmax(z.double() / T, dim=-1)))
             for z, T in [(LOGITS[0], 1.0), (LOGITS[0], 4.0), (LOGITS[1], 0.5), (LOGITS[1], 2.0),
                          (LOGITS[2], 1.0), (LOGITS[3], 0.25), (LOGITS[3], 20.0)]]
    return check_cases("soften", lambda *a: Vector(fn(*a)), cases,
                       hint="divide the logits by T first, then softmax: exp(z_i / T) / sum_j exp(z_j / T). "
                            "T > 1 flattens the distribution, T < 1 sharpens it.")


def _kd_gradient_autograd(student: torch.Tensor, teacher: torch.Tensor, T: float) -> Vector:
    """d/dz_S of T^2 * KL(softmax(z_T / T) || softmax(z_S / T)), by autograd, in float64."""
    s = student.double().clone().requires_grad_(True)
    loss = T**2 * F.kl_div(F.log_softmax(s / T, dim=-1), F.softmax(teacher.double() / T, dim=-1), reduction="sum")
    (grad,) = torch.autograd.grad(loss, s)
    return Vector(grad)


def check_kd_gradient(fn) -> bool:
    """fn(student_logits, teacher_logits, T) -> the gradient, with respect to the student's logits at one position
    (1-D tensors), of T^2 * KL(softmax(teacher / T) || softmax(student / T)). Work it out by hand; autograd checks it."""
    pairs = [(LOGITS[0], torch.tensor([0.0, 2.5, 1.0, -1.5]), 1.0), (LOGITS[0], torch.tensor([0.0, 2.5, 1.0, -1.5]), 4.0),
             (LOGITS[1], torch.tensor([4.0, -1.0, 1.5, 0.0, 2.0]), 2.0), (LOGITS[2], torch.tensor([1.0, -1.0, 0.0]), 0.5),
             (LOGITS[3], torch.tensor([0.0, 9.5, -1.0, 3.0, 2.0, 8.0]), 10.0)]
    cases = [((s, t, T), _kd_gradient_autograd(s, t, T)) for s, t, T in pairs]
    return check_cases("kd_gradient", lambda *a: Vector(fn(*a)), cases,
                       hint="d KL / d z_S = (p_S - p_T) / T with p = softmax(z / T); the T^2 factor makes it "
                            "T * (p_S - p_T).")


def _llama_params(hidden: int, layers: int, intermediate: int, vocab: int, heads: int, kv_heads: int) -> int:
    """Parameters of transformers' LlamaForCausalLM with untied embeddings, built on the meta device (no memory)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
                         tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def check_student_params(fn) -> bool:
    """fn(hidden, layers, intermediate, vocab, heads, kv_heads) -> parameters of a Llama-style decoder: untied
    embedding and lm_head, per layer q/k/v/o (head_dim = hidden // heads; k and v have kv_heads heads), a gate/up/down
    MLP and two RMSNorm weights, plus the final norm. No biases."""
    configs = [(256, 8, 768, 4096, 4, 2),    # the course's teacher: 8,392,960
               (128, 6, 384, 4096, 2, 1),    # the course's student: 2,229,888
               (64, 2, 256, 1000, 4, 4),     # plain multi-head attention
               (192, 3, 512, 500, 6, 2)]
    cases = [(c, _llama_params(*c)) for c in configs]
    return check_cases("student_params", fn, cases,
                       hint="per layer: 2*hidden^2 (q, o) + 2*hidden*kv_heads*head_dim (k, v) + 3*hidden*intermediate "
                            "+ 2*hidden (norms); plus 2*vocab*hidden (embedding, lm_head) + hidden (final norm).")


# --- the loss on a language model's logits: shared inputs -------------------------------------------------------------

KD_SEEDS = (0, 1, 2)
# (B, L, V, T, alpha); the first has B > 1, several row lengths and 0 < alpha < 1, T != 1, so that a wrong attempt
# is told apart in the first case
KD_SHAPES = ((3, 8, 50, 2.0, 0.5), (1, 6, 11, 4.0, 0.3), (4, 16, 257, 1.5, 0.7), (2, 12, 1000, 3.0, 0.2))
# The losses are of size 1-50 and the reference runs in float32 (distillation_loss computes in float32), so the
# tolerance is a few float32 roundings of them; a float16 loss or a 0.1% error fails it.
KD_ATOL, KD_RTOL = 1e-5, 1e-5
# Gradient entries are (a probability difference) / N, up to about 0.3; float32 rounding of the softmax (in the
# reference, through autograd) leaves errors below 5e-8.
GRAD_ATOL, GRAD_RTOL = 1e-7, 1e-4


def _lm_batch(B: int, L: int, V: int, g: torch.Generator, *, scale: float = 3.0,
              lengths: list[int] | None = None) -> tuple[torch.Tensor, ...]:
    """(student_logits, teacher_logits, input_ids, attention_mask): random float32 logits (B, L, V) of standard
    deviation `scale`, right-padded rows (row 0 full unless `lengths` says otherwise), padding id 0."""
    s = torch.randn(B, L, V, generator=g) * scale
    t = torch.randn(B, L, V, generator=g) * scale
    if lengths is None:
        n = torch.randint(2, L + 1, (B,), generator=g)
        n[0] = L
    else:
        n = torch.tensor(lengths)
    mask = (torch.arange(L)[None, :] < n[:, None]).long()
    ids = torch.randint(1, V, (B, L), generator=g) * mask
    return s, t, ids, mask


def _random_prompts(mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A prompt length in [1, length - 1] per row (so every row with 2 or more tokens has a response token)."""
    n = mask.sum(1)
    return (torch.rand(len(n), generator=g) * (n - 1).clamp(min=1)).long() + 1


def _rows(mask: torch.Tensor) -> str:
    padded = " (right-padded)" if bool((mask == 0).any()) else " (no padding)"
    return ", ".join(str(int(x)) for x in mask.sum(1)) + " tokens" + padded


# --- 1. the loss ------------------------------------------------------------------------------------------------------

def kd_loss_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (student_logits, teacher_logits, input_ids, attention_mask, prompt_len, T, alpha))
    of check_kd_loss: seeds x shapes, then the edge cases."""
    labels, cases = [], []
    for seed in KD_SEEDS:
        for B, L, V, T, alpha in KD_SHAPES:
            g = torch.Generator().manual_seed(1000 * seed + V)
            s, t, ids, mask = _lm_batch(B, L, V, g)
            prompt = _random_prompts(mask, g)
            labels.append(f"seed {seed}, (B, L, V) = ({B}, {L}, {V}), T {T:g}, alpha {alpha:g}; rows of "
                          f"{_rows(mask)}, prompts of {', '.join(map(str, prompt.tolist()))}")
            cases.append((s, t, ids, mask, prompt, T, alpha))
    g = torch.Generator().manual_seed(10)

    def edge(label, B, L, V, T, alpha, *, lengths=None, prompt=None, scale=3.0):
        s, t, ids, mask = _lm_batch(B, L, V, g, scale=scale, lengths=lengths or [L] * B)
        p = torch.tensor(prompt) if prompt is not None else torch.ones(B, dtype=torch.long)
        labels.append(f"edge case: {label}; (B, L, V) = ({B}, {L}, {V}), T {T:g}, alpha {alpha:g}, rows of "
                      f"{_rows(mask)}, prompts of {', '.join(map(str, p.tolist()))}")
        cases.append((s, t, ids, mask, p, T, alpha))
        return cases[-1]

    edge("no padding, every prompt 1 token (plain language-model distillation: every position but the last is "
         "scored)", 2, 8, 50, 2.0, 0.5)
    edge("row 1's prompt fills the row (nothing to score in it), row 2 is padded", 3, 8, 50, 2.0, 0.5,
         lengths=[8, 6, 5], prompt=[2, 6, 3])
    edge("row 1 holds one real token (nothing to score in it)", 3, 10, 30, 2.0, 0.5, lengths=[10, 1, 7],
         prompt=[4, 1, 2])
    edge("alpha 0 (pure distillation)", 2, 8, 50, 4.0, 0.0, lengths=[8, 5], prompt=[3, 2])
    edge("alpha 1 (hard labels only: T must not matter)", 2, 8, 50, 3.0, 1.0, lengths=[6, 8], prompt=[1, 4])
    edge("T 1", 2, 8, 50, 1.0, 0.5, lengths=[8, 7], prompt=[2, 3])
    s, t, ids, mask, p, T, alpha = edge("the student's logits are the teacher's plus a constant per position "
                                        "(KL = 0)", 2, 8, 50, 2.0, 0.3, lengths=[8, 6], prompt=[2, 2])
    t.copy_(s + 10 * torch.randn(2, 8, 1, generator=g))
    edge("logits up to about +-150 (exp overflows float32)", 2, 8, 50, 1.0, 0.5, lengths=[8, 6], prompt=[2, 3],
         scale=40.0)
    return labels, cases


def response_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
    """next_token_labels, with the positions whose target is a prompt token ignored as well (target i + 1 <
    prompt_len of the row)."""
    labels = next_token_labels(input_ids, attention_mask)
    target = torch.arange(1, input_ids.shape[1] + 1)  # the token that each position's logits predict
    labels[target[None, :] < prompt_len[:, None]] = IGNORE_INDEX
    return labels


def reference_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, prompt_len: torch.Tensor, T: float, alpha: float) -> torch.Tensor:
    """course_lib.distill.distillation_loss on the response labels: a 0-d tensor."""
    labels = response_labels(input_ids, attention_mask, prompt_len)
    return distillation_loss(student_logits, teacher_logits, labels, temperature=T, alpha=alpha).loss.detach()


def _scored(input_ids, attention_mask, prompt_len, *, shift=True, pad="target", prompt="target") -> tuple:
    """(logit positions used, labels, scored (B, P) bool) as a learner chooses them; the defaults are right."""
    L = input_ids.shape[1]
    n = L - 1 if shift else L
    pos = torch.arange(n)
    target = pos + 1 if shift else pos
    labels = input_ids[:, target]
    real = {"target": attention_mask[:, target], "position": attention_mask[:, pos],
            "none": torch.ones_like(attention_mask[:, pos])}[pad].bool()
    if prompt == "none":
        return n, labels, real
    where = target if prompt == "target" else pos  # "position": the logits' own index, one off
    return n, labels, real & (where[None, :] >= prompt_len[:, None])


def _reduce(x: torch.Tensor, scored: torch.Tensor, how: str) -> torch.Tensor:
    total = (x * scored).sum()
    if how == "token":
        return total / scored.sum()
    if how == "batch":
        return total / x.shape[0]
    if how == "sum":
        return total
    if how == "positions":
        return total / scored.numel()
    if how == "rows":
        per_row = [(x[b] * scored[b]).sum() / scored[b].sum() for b in range(x.shape[0]) if scored[b].any()]
        return torch.stack(per_row).mean()
    raise ValueError(how)


def _kd_by_hand(s, t, input_ids, attention_mask, prompt_len, T, alpha, *, shift=True, pad="target",
                prompt="target", reduce="token", kl_reduce=None, t_power=2, kl="forward", soften="both",
                ce_T=False, swap=False) -> torch.Tensor:
    """The loss in float64 as a learner writes it, with one choice passed in; the defaults give the reference."""
    n, labels, scored = _scored(input_ids, attention_mask, prompt_len, shift=shift, pad=pad, prompt=prompt)
    s, t = s[:, :n].double(), t[:, :n].double()
    log_p_s = F.log_softmax(s / T if soften == "both" else s, -1)
    log_p_t = F.log_softmax(t / T, -1)
    if kl == "forward":
        per_kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    else:
        per_kl = (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)
    per_ce = -F.log_softmax(s / T if ce_T else s, -1).gather(-1, labels[..., None]).squeeze(-1)
    a = 1 - alpha if swap else alpha
    return a * _reduce(per_ce, scored, reduce) + (1 - a) * T**t_power * _reduce(per_kl, scored, kl_reduce or reduce)


_KD_MESSAGES = {
    "shift": ("you didn't shift the labels: the logits at position i predict token i + 1. Compare logits[:, :-1] with "
              "input_ids[:, 1:] (the last position has no target) and score position i when token i + 1 is a real "
              "response token."),
    "pad_position": ("your padding mask is one position off: position i is scored when its target, token i + 1, is "
                     "real, attention_mask[:, 1:]. attention_mask[:, :-1] scores the last real token of a padded row, "
                     "whose target is padding."),
    "pad_none": ("you scored positions whose target is padding: keep position i only where attention_mask[:, i + 1] "
                 "is 1."),
    "prompt_position": ("your prompt mask is one position off: the first response token (index prompt_len) is "
                        "predicted by the logits at position prompt_len - 1, which must be scored. Score position i "
                        "when i + 1 >= prompt_len."),
    "prompt_none": ("you scored the prompt too: only the positions whose target is a response token count, "
                    "i + 1 >= prompt_len of the row."),
    "batch": ("you divided by the batch size (what F.kl_div's 'batchmean' does to (B, L, V) logits: the seed's "
              "mistake). Average over the scored tokens: the sum over the whole batch divided by N, the number of "
              "scored positions."),
    "sum": "you summed over the scored tokens without averaging: divide by N, the number of scored positions.",
    "rows": ("you averaged each row, then the rows. Every scored token weighs the same: divide the sum over the whole "
             "batch by N, the total number of scored positions (the rows have different numbers of them)."),
    "positions": ("you divided by every position, B x (L - 1), scored or not: divide by N, the number of scored "
                  "positions."),
    "t1": "the KL term is multiplied by T, not T^2: (1 - alpha) * T^2 * KL.",
    "t0": "you left out the T^2 factor: (1 - alpha) * T^2 * KL(p_T || p_S).",
    "reverse": ("your KL is reversed: KL(p_T || p_S) = sum_v p_T (log p_T - log p_S), weighted by the teacher's "
                "probabilities."),
    "soften": ("you softened only the teacher: both sides are taken at temperature T, softmax(s / T) and "
               "softmax(t / T)."),
    "ce_T": "your cross-entropy uses the softened student (logits / T): the hard-label term is at T = 1.",
    "swap": "alpha and 1 - alpha are swapped: alpha weighs the hard-label CE, 1 - alpha the T^2 * KL term.",
}
_KD_VARIANTS = (
    (dict(shift=False), "shift"),
    (dict(pad="position"), "pad_position"),
    (dict(pad="none"), "pad_none"),
    (dict(prompt="position"), "prompt_position"),
    (dict(prompt="none"), "prompt_none"),
    (dict(reduce="batch"), "batch"),
    (dict(kl_reduce="batch"), "batch"),  # the seed: F.cross_entropy's token mean, F.kl_div's "batchmean"
    (dict(kl_reduce="sum"), "sum"),
    (dict(reduce="sum"), "sum"),
    (dict(reduce="rows"), "rows"),
    (dict(reduce="positions"), "positions"),
    (dict(t_power=1), "t1"),
    (dict(t_power=0), "t0"),
    (dict(kl="reverse"), "reverse"),
    (dict(soften="teacher"), "soften"),
    (dict(ce_T=True), "ce_T"),
    (dict(swap=True), "swap"),
)
_NOT_FINITE = ("your result is NaN or infinite: exp() of logits near 100 overflows float32. Work with "
               "F.log_softmax (it subtracts the largest logit first) and take p = log_p.exp().")
_KD_HINT = ("position i (0 .. L-2) predicts token i + 1: s, t = logits[:, :-1]; labels = input_ids[:, 1:]; scored = "
            "attention_mask[:, 1:] == 1 and i + 1 >= prompt_len of the row. Per scored position: CE = -log_softmax(s)"
            "[label] and KL = sum_v p_T (log p_T - log p_S) with p = softmax(logits / T). loss = alpha * "
            "sum(CE) / N + (1 - alpha) * T^2 * sum(KL) / N, N = the number of scored positions in the batch.")


def _diagnose_with(variants, messages, by_hand, reference, atol, rtol):
    """diagnose(args, got): the message of the first variant by_hand(*args, **kwargs) that differs from the
    reference on this case and matches got; a note on NaN or infinite results; else None."""
    def diagnose(args: tuple, got: torch.Tensor) -> str | None:
        got = got.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(got).all()):
            return _NOT_FINITE
        expected = reference(*args).double()
        for kwargs, key in variants:
            mistake = by_hand(*args, **kwargs)
            if torch.allclose(mistake, expected, rtol=rtol, atol=atol):
                continue  # this case cannot tell that mistake apart
            if torch.allclose(got, mistake, rtol=10 * rtol, atol=10 * atol):
                return messages[key]
        if torch.allclose(got, expected, rtol=3e-3, atol=1e-3 * float(expected.abs().max())):
            return ("your result is right to about 3 significant digits only: was it computed in float16 or "
                    "bfloat16? Compute in float32 (logits.float()).")
        return None
    return diagnose


def check_kd_loss(fn) -> bool:
    """fn(student_logits, teacher_logits, input_ids, attention_mask, prompt_len, T, alpha) -> the distillation loss
    of a batch of prompts and responses, a 0-d tensor.

    student_logits, teacher_logits: float32 (B, L, V), what the two models return for input_ids (B, L);
    attention_mask (B, L): 1 for real tokens, 0 for padding (rows are right-padded, padding id 0); prompt_len (B,):
    row b is a prompt of prompt_len[b] tokens followed by the response. Only the response is distilled:

    * label shift: the logits at position i predict token i + 1, so positions 0 .. L-2 have targets
      input_ids[:, 1:], and the last position none;
    * position i is scored when its target is real (attention_mask[b, i + 1] == 1) and a response token
      (i + 1 >= prompt_len[b]);
    * per scored position: CE = -log softmax(s)[target] (T = 1) and KL = sum_v p_T (log p_T - log p_S) with
      p = softmax(logits / T);
    * loss = alpha * (sum of CE) / N + (1 - alpha) * T^2 * (sum of KL) / N, N = the scored positions of the whole
      batch (a mean over tokens, not over rows).

    Checked against course_lib.distill.distillation_loss (with next_token_labels and the prompt ignored) on
    random logits with (B, L, V) in {(3, 8, 50), (1, 6, 11), (4, 16, 257), (2, 12, 1000)}, T in {1.5, 2, 3, 4},
    alpha in {0.2, 0.3, 0.5, 0.7}, seeds 0, 1, 2; then no padding with 1-token prompts, a row whose prompt fills
    it, a row of one token, alpha 0, alpha 1, T 1, a student equal to the teacher up to a constant per position,
    and logits up to about +-150. Tolerance: |got - expected| <= 1e-5 + 1e-5 * |expected|.
    """
    labels, cases = kd_loss_cases()
    return check_tensor_cases("kd_loss", fn, cases, reference_kd_loss, atol=KD_ATOL, rtol=KD_RTOL, labels=labels,
                              hint=_KD_HINT, diagnose=_diagnose_with(_KD_VARIANTS, _KD_MESSAGES, _kd_by_hand,
                                                                     reference_kd_loss, KD_ATOL, KD_RTOL))


# --- 2. its gradient --------------------------------------------------------------------------------------------------

def kd_grad_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (student_logits, teacher_logits, input_ids, attention_mask, T, alpha)) of
    check_kd_grad: seeds x shapes, then the edge cases."""
    labels, cases = [], []
    for seed in KD_SEEDS:
        for B, L, V, T, alpha in KD_SHAPES[:3]:
            g = torch.Generator().manual_seed(2000 * seed + V)
            s, t, ids, mask = _lm_batch(B, L, V, g)
            labels.append(f"seed {seed}, (B, L, V) = ({B}, {L}, {V}), T {T:g}, alpha {alpha:g}; rows of "
                          f"{_rows(mask)}")
            cases.append((s, t, ids, mask, T, alpha))
    g = torch.Generator().manual_seed(20)

    def edge(label, B, L, V, T, alpha, lengths, scale=3.0):
        s, t, ids, mask = _lm_batch(B, L, V, g, scale=scale, lengths=lengths)
        labels.append(f"edge case: {label}; (B, L, V) = ({B}, {L}, {V}), T {T:g}, alpha {alpha:g}, rows of "
                      f"{_rows(mask)}")
        cases.append((s, t, ids, mask, T, alpha))
        return cases[-1]

    edge("no padding", 2, 8, 50, 2.0, 0.5, [8, 8])
    edge("row 1 holds one real token (its gradient is zero)", 3, 10, 30, 2.0, 0.5, [10, 1, 7])
    edge("alpha 0 (pure distillation)", 2, 8, 50, 4.0, 0.0, [8, 5])
    edge("alpha 1 (hard labels only)", 2, 8, 50, 3.0, 1.0, [6, 8])
    edge("T 1", 2, 8, 50, 1.0, 0.5, [8, 7])
    edge("logits up to about +-150 (exp overflows float32)", 2, 8, 50, 1.0, 0.5, [8, 6], scale=40.0)
    return labels, cases


def reference_kd_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, T: float, alpha: float) -> torch.Tensor:
    """d loss / d student_logits by autograd through course_lib.distill.distillation_loss: (B, L, V)."""
    s = student_logits.detach().clone().requires_grad_(True)
    labels = next_token_labels(input_ids, attention_mask)
    loss = distillation_loss(s, teacher_logits, labels, temperature=T, alpha=alpha).loss
    (grad,) = torch.autograd.grad(loss, s)
    return grad


def _grad_by_hand(s, t, input_ids, attention_mask, T, alpha, *, shift=True, pad="target", norm="token",
                  t_power=1, sign=1, onehot=True, ce_T=False, swap=False) -> torch.Tensor:
    """The gradient in float64 as a learner writes it, with one choice passed in; the defaults are right."""
    B, L, V = s.shape
    n, labels, scored = _scored(input_ids, attention_mask, torch.ones(B, dtype=torch.long), shift=shift, pad=pad,
                                prompt="none")
    s, t = s.double(), t.double()
    a = 1 - alpha if swap else alpha
    hot = F.one_hot(labels, V).double() if onehot else 0.0
    ce = torch.softmax(s[:, :n] / T if ce_T else s[:, :n], -1) - hot
    kd = T**t_power * (torch.softmax(s[:, :n] / T, -1) - torch.softmax(t[:, :n] / T, -1))
    per = sign * (a * ce + (1 - a) * kd) * scored[..., None]
    divide = {"token": scored.sum(), "batch": B, "none": 1, "positions": scored.numel()}[norm]
    grad = torch.zeros(B, L, V, dtype=torch.float64)
    grad[:, :n] = per / divide
    return grad


_GRAD_MESSAGES = {
    "shift": ("no label shift: the logits at position i predict token i + 1, so the one-hot at position i is that of "
              "input_ids[:, i + 1], and the last position (no target) gets no gradient."),
    "pad_position": ("your padding mask is one position off: position i gets a gradient when its target, token i + 1, "
                     "is real (attention_mask[:, 1:]); the last real token of a padded row has a padding target."),
    "pad_none": ("positions whose target is padding get a gradient: they are not in the loss, so their gradient is "
                 "zero. Multiply by the scored mask, attention_mask[:, i + 1]."),
    "norm_none": ("your gradient is not divided by N: the loss is a mean over the N scored tokens, so each scored "
                  "position's gradient carries a factor 1/N."),
    "norm_batch": ("you divided by the batch size: the loss averages over the N scored tokens of the whole batch, so "
                   "divide by N."),
    "norm_positions": "you divided by every position, scored or not: divide by N, the number of scored positions.",
    "t2": ("the KL part has T^2 where the gradient has T: d/dz of softmax(z / T) brings a 1/T (chain rule), so "
           "d(T^2 KL)/dz_S = T * (softmax(s / T) - softmax(t / T))."),
    "t0": ("the KL part lacks the factor T: d(T^2 KL)/dz_S = T^2 * (p_S - p_T) / T = T * (softmax(s / T) - "
           "softmax(t / T))."),
    "t_inv": ("you left out the T^2 factor: the loss has T^2 * KL, whose gradient is T * (p_S - p_T), not "
              "(p_S - p_T) / T."),
    "sign": ("your gradient has the wrong sign: it is student minus target, softmax(s) - onehot(label) for the CE "
             "and T * (p_S - p_T) for the KL term."),
    "onehot": "your CE part lacks the one-hot: d CE / dz = softmax(z) - onehot(label).",
    "ce_T": "your CE part uses softmax(s / T): the hard-label term is at T = 1, its gradient softmax(s) - onehot.",
    "swap": "alpha and 1 - alpha are swapped: alpha weighs the CE part, 1 - alpha the T^2 * KL part.",
}
_GRAD_VARIANTS = (
    (dict(shift=False), "shift"),
    (dict(pad="position"), "pad_position"),
    (dict(pad="none"), "pad_none"),
    (dict(norm="none"), "norm_none"),
    (dict(norm="batch"), "norm_batch"),
    (dict(norm="positions"), "norm_positions"),
    (dict(t_power=2), "t2"),
    (dict(t_power=0), "t0"),
    (dict(t_power=-1), "t_inv"),
    (dict(sign=-1), "sign"),
    (dict(onehot=False), "onehot"),
    (dict(ce_T=True), "ce_T"),
    (dict(swap=True), "swap"),
)
_GRAD_HINT = ("zero everywhere except the scored positions i (attention_mask[:, i + 1] == 1, i <= L - 2), where the "
              "gradient is (alpha * (softmax(s_i) - onehot(input_ids[:, i + 1])) + (1 - alpha) * T * "
              "(softmax(s_i / T) - softmax(t_i / T))) / N, N = the number of scored positions in the batch.")


def check_kd_grad(fn) -> bool:
    """fn(student_logits, teacher_logits, input_ids, attention_mask, T, alpha) -> the gradient of the distillation
    loss with respect to student_logits, a tensor of shape (B, L, V): what loss.backward() hands the student.

    The loss is check_kd_loss's without a prompt (every real target is scored): position i (0 .. L-2) predicts
    token i + 1 and is scored when attention_mask[b, i + 1] == 1; loss = alpha * mean CE + (1 - alpha) * T^2 *
    mean KL(p_T || p_S) over the N scored positions. Work the gradient out by hand (no autograd): per scored
    position the CE part is softmax(s) - onehot(target) and the KL part, with its T^2, T * (softmax(s / T) -
    softmax(t / T)); both divided by N. Every other position (padding targets, the last one) gets 0.

    Checked against autograd through course_lib.distill.distillation_loss on random logits with (B, L, V) in
    {(3, 8, 50), (1, 6, 11), (4, 16, 257)}, seeds 0, 1, 2; then no padding, a row of one token, alpha 0, alpha 1,
    T 1, logits up to about +-150. Tolerance: |got - expected| <= 1e-7 + 1e-4 * |expected| for every entry.
    """
    labels, cases = kd_grad_cases()
    return check_tensor_cases("kd_grad", fn, cases, reference_kd_grad, atol=GRAD_ATOL, rtol=GRAD_RTOL,
                              labels=labels, hint=_GRAD_HINT, diagnose=_diagnose_grad)


def _diagnose_grad(args: tuple, got: torch.Tensor) -> str | None:
    """A recomputed mistake that matches; else, a gradient where none belongs (padding targets, the last position)."""
    message = _diagnose_with(_GRAD_VARIANTS, _GRAD_MESSAGES, _grad_by_hand, reference_kd_grad, GRAD_ATOL,
                             GRAD_RTOL)(args, got)
    if message is not None:
        return message
    mask = args[3]
    nonzero = got.detach().to("cpu", torch.float64).abs().amax(-1) > GRAD_ATOL  # (B, L)
    if bool(nonzero[:, :-1][mask[:, 1:] == 0].any()):
        return _GRAD_MESSAGES["pad_none"]
    if bool(nonzero[:, -1].any()):
        return ("the last position gets a gradient: it has no next token, so it is not in the loss and its "
                "gradient is 0. " + _GRAD_MESSAGES["shift"])
    return None


WARM_UPS = ("soften", "kd_gradient", "student_params")
EXERCISES = {"soften": check_soften, "kd_gradient": check_kd_gradient, "student_params": check_student_params,
             "kd_loss": check_kd_loss, "kd_grad": check_kd_grad}
