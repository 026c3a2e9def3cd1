"""The chapter's student: the course model's recipe at about a quarter of the parameters."""

from __future__ import annotations

from ..core.env import seed_everything
from ..lm.recipe import ModelSpec, llama_config

# hidden 128 (teacher 256), 6 layers (8), 2 heads with 1 KV head (4 and 2), MLP 384 (768):
# 2,229,888 parameters against the teacher's 8,392,960 (26.6%); half of them are the embeddings.
STUDENT = ModelSpec(hidden=128, layers=6, heads=2, kv_heads=1, intermediate=384, linear_multiple=64)


def new_student(tokenizer, spec: ModelSpec = STUDENT, *, seed: int = 0, device=None):
    """A freshly initialised LlamaForCausalLM with `spec`'s shape and the tokenizer's vocabulary."""
    from transformers import LlamaForCausalLM

    seed_everything(seed)
    model = LlamaForCausalLM(llama_config(spec, tokenizer))
    return model.to(device) if device is not None else model


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
