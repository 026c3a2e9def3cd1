"""The decoder blocks of a causal LM, and running them one at a time on recorded inputs.

GPTQ, AWQ, SmoothQuant, SparseGPT and the distillation trainers all walk a model block by block:

    path, blocks, groups = find_blocks(model)          # 'model.layers', the blocks, GPTQ's layer groups
    check_calibration(model, calib)                    # token ids of the right shape, device and range
    inputs = first_block_inputs(model, blocks[0], calib, batch_size=16)   # [(hidden, kwargs)] per batch
    outputs = run_block(blocks[0], inputs)             # the block's outputs: the next block's inputs

Supported: the architectures in ARCHITECTURES (Llama, Qwen2, Mistral, OPT); anything else fails
with a message that names them.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
from torch import nn

from .tokens import check_token_ids

_ATTN = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
_LLAMA = [_ATTN, ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
# model_type -> (path of the decoder blocks, true-sequential groups of linear layers inside a block)
ARCHITECTURES: dict[str, tuple[str, list[list[str]]]] = {
    "llama": ("model.layers", _LLAMA),
    "qwen2": ("model.layers", _LLAMA),
    "mistral": ("model.layers", _LLAMA),
    "opt": ("model.decoder.layers", [_ATTN, ["self_attn.out_proj"], ["fc1"], ["fc2"]]),
}
CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past", "use_cache")


class StopForward(Exception):
    """Raised by a hook to end a forward pass early once the needed inputs are recorded."""



def find_blocks(model: nn.Module, what: str = "GPTQ") -> tuple[str, nn.ModuleList, list[list[str]]]:
    """(path, decoder blocks, true-sequential layer groups) of a supported model; clear errors otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    supported = ", ".join(ARCHITECTURES)
    if model_type not in ARCHITECTURES:
        extra = " (its projections are transformers Conv1D layers, not nn.Linear)" if model_type == "gpt2" else ""
        raise ValueError(f"{what}: unsupported architecture {model_type!r}{extra}; supported: {supported}.")
    path, groups = ARCHITECTURES[model_type]
    try:
        blocks = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"{what}: a {model_type!r} model should hold its decoder blocks at {path!r}, this one does "
                         f"not; pass the *ForCausalLM model (supported: {supported}).") from None
    for i, block in enumerate(blocks):
        for name in sum(groups, []):
            layer = block.get_submodule(name)
            if type(layer) is not nn.Linear:
                raise TypeError(f"{what}: unsupported layer type {type(layer).__name__} at {path}.{i}.{name}; "
                                f"supported: nn.Linear (in {supported} models).")
    return path, blocks, groups


def check_calibration(model: nn.Module, calibration: torch.Tensor) -> None:
    """Calibration must be a 2-D tensor (n, seq) of token ids on the model's device, seq within the context."""
    check_token_ids(calibration)  # a tensor of integer ids, 2-D, not empty
    device = model.get_input_embeddings().weight.device
    if calibration.device != device:
        raise ValueError(f"calibration is on {calibration.device} but the model's embeddings are on {device}; "
                         f"move it with calibration.to({str(device)!r}).")
    vocab = model.get_input_embeddings().weight.shape[0]
    lo, hi = calibration.min().item(), calibration.max().item()
    if lo < 0 or hi >= vocab:
        raise ValueError(f"calibration token ids must lie in [0, {vocab}), got [{lo}, {hi}]; tokenize with the "
                         f"model's own tokenizer.")
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and calibration.shape[1] > max_pos:
        raise ValueError(f"calibration seq_len {calibration.shape[1]} exceeds the model's {max_pos} positions; "
                         f"use shorter samples.")


def first_block_inputs(model: nn.Module, block: nn.Module, calibration: torch.Tensor,
                       batch_size: int) -> list[tuple[torch.Tensor, dict]]:
    """(hidden_states, kwargs) that `block` receives, per calibration batch, captured with a pre-hook."""
    captured: list[tuple[torch.Tensor, dict]] = []

    def catch(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden.detach(), {k: v for k, v in kwargs.items() if k not in CACHE_KWARGS}))
        raise StopForward

    handle = block.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for i in range(0, calibration.shape[0], batch_size):
            try:
                model(input_ids=calibration[i:i + batch_size], use_cache=False)
            except StopForward:
                pass
    finally:
        handle.remove()
    return captured


def run_block(block: nn.Module, inputs: list[tuple[torch.Tensor, dict]], cache=None) -> list[torch.Tensor]:
    """The block's output hidden states for each recorded input (a tuple output's first element).

    cache: an object with .active() (a context manager) and .batch, set to the batch index before each
    forward, which replays the outputs of finished submodules (gptq.model's _FinalOutputs)."""
    outs = []
    with cache.active() if cache else contextlib.nullcontext():
        for i, (hidden, kwargs) in enumerate(inputs):
            if cache:
                cache.batch = i
            out = block(hidden, **kwargs)
            outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


def block_progress(blocks, desc: str, progress: bool):
    """The blocks, wrapped in a tqdm bar on stderr unless progress is False or TQDM_DISABLE is set."""
    from tqdm import tqdm

    quiet = not progress or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    return tqdm(blocks, desc=desc, file=sys.stderr, disable=quiet)


def to_device(obj, device):
    """Move the tensors in a (nested) kwargs structure to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
