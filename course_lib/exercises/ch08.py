"""Checks for chapter 08: softened probabilities, the distillation gradient, a Llama student's parameter count."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import check_cases


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


EXERCISES = {"soften": check_soften, "kd_gradient": check_kd_gradient, "student_params": check_student_params}
