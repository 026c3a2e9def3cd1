"""Pruning with a real tool: llm-compressor's SparseGPT and Wanda on the course model, on CPU.

    model, run = prune_with_llmcompressor(BUNDLED_DIR, calib, method="sparsegpt", sparsity=0.5)
    model, run = prune_with_llmcompressor(BUNDLED_DIR, calib, method="wanda", mask_structure="2:4")
    print_table(sparsity_report(model))

What llm-compressor 0.14 does (read in llmcompressor/modifiers/pruning/{sparsegpt,wanda}/ and
pipelines/sequential/), next to the course's own course_lib.prune:

* Which layers. The modifiers' default ``targets=["Linear"]`` makes *every* nn.Linear a target,
  lm_head included: it gets pruned to 50% too (the "lm_head was auto-ignored before" warning they
  carry never fires, because the name they test is "lm_head." with a trailing dot). Here the
  targets are the decoder-layer classes (``model._no_split_modules``, LlamaDecoderLayer for the
  course model): the modifiers then prune every Linear *inside* the decoder blocks (q, k, v, o,
  gate, up, down) and nothing else, as the course's prune_model does. lm_head stays dense.
* How much. One uniform sparsity for every layer (``sparsity_profile=None``). OWL
  (``sparsity_profile="owl"``, owl_m, owl_lmbda) would spread it unevenly over the blocks; not
  used here. With an N:M ``mask_structure`` the ``sparsity`` argument is ignored by the library
  (N of every M are pruned); this wrapper insists that the two agree.
* Pipeline. oneshot picks the "sequential" pipeline: the model is traced into one subgraph per
  decoder block; the calibration batches run through block b with hooks on (collecting H or the
  input norms for all its Linears at once), the block's Linears are pruned, and the block runs
  again to give block b+1 its inputs (``propagate_error=True``). So a block sees the outputs of
  the already-pruned blocks before it, but inside a block every Linear is calibrated on the dense
  block (o_proj sees the dense q/k/v's output). course_lib's pipeline also refreshes the inputs
  between the groups of a block (q/k/v, then o, then gate/up, then down).
* SparseGPT. H = 2/n sum_x x x^T in float32 (n counts sequences, not tokens: a scale that cancels),
  dead columns (H_jj = 0) zeroed, damping ``dampening_frac`` (0.01) * mean(diag H) added to the
  diagonal, then U = upper Cholesky factor of H^-1. Columns are processed in blocks of
  ``block_size`` (128). Unstructured: the mask is chosen when a block starts, over all rows and
  the block's columns jointly, on the already-updated weights, by the OBS saliency (w / U_jj)^2;
  it prunes the weights with saliency <= the k-th smallest, k = int(rows * cols * sparsity), i.e.
  k + 1 per block (one more than asked; more on ties). N:M: the mask of each group of M columns is
  chosen per row when the group's first column is reached (block_size must be a multiple of M).
  The error of each pruned column is spread over the later columns (w_k -= err_j U_jk).
* Wanda. Per input feature j, S_j = mean over sequences of sum_tokens x_j^2; score
  |W_ij| * sqrt(S_j). Unstructured: the int(in_features * sparsity) lowest scores of each output
  row are pruned (the comparison group is the row, as in the Wanda paper). N:M: the N lowest of
  every M consecutive inputs of each row. No weight update; block_size and dampening are unused.
* Device. It runs on CPU: the only pin_memory calls are in the AWQ modifier and in the data
  loader when an accelerator exists and num_workers > 0 (neither applies), so no workaround is
  needed; it logs "No accelerator available! Compressing model on CPU instead" (captured here).

Library output (loguru lines, progress bars, warnings) goes to ``ToolRun.log``, as in
course_lib.gptq.tools, whose ToolRun and quiet/require helpers this module reuses.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..gptq.tools import ToolRun, _check_dirs, _quiet, check_tool_calibration, llmcompressor_dataset

__all__ = ["METHODS", "MASK_STRUCTURES", "prune_with_llmcompressor", "sparsity_report"]

METHODS = ("sparsegpt", "wanda")
MASK_STRUCTURES = ("0:0", "2:4", "4:8")  # "0:0" = unstructured, as llm-compressor spells it


def _parse_mask_structure(mask_structure: str) -> tuple[int, int]:
    """ "N:M" -> (N, M): N of every M consecutive input weights are pruned; (0, 0) = unstructured."""
    if mask_structure not in MASK_STRUCTURES:
        raise ValueError(f"mask_structure must be one of {MASK_STRUCTURES} ('0:0' = unstructured, '2:4' = 2 "
                         f"zeros in every 4 inputs), got {mask_structure!r}.")
    n, m = (int(part) for part in mask_structure.split(":"))
    return n, m


def _check_settings(method: str, sparsity: float, mask_structure: str, block_size: int,
                    dampening_frac: float) -> tuple[int, int]:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (llm-compressor's SparseGPTModifier and "
                         f"WandaPruningModifier), got {method!r}.")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity is the fraction of weights set to zero and must lie in [0, 1), got {sparsity!r}.")
    n, m = _parse_mask_structure(mask_structure)
    if m and abs(sparsity - n / m) > 1e-9:
        raise ValueError(f"mask_structure {mask_structure!r} prunes exactly {n} of every {m} weights, a sparsity of "
                         f"{n / m}; pass sparsity={n / m} (llm-compressor would silently ignore {sparsity}).")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int (columns per SparseGPT block), got {block_size!r}.")
    if m and block_size % m:
        raise ValueError(f"block_size {block_size} must be a multiple of M={m}: an {n}:{m} group must not straddle "
                         "two SparseGPT blocks.")
    if not 0 < dampening_frac < 1:
        raise ValueError(f"dampening_frac must lie in (0, 1), got {dampening_frac!r}.")
    return n, m


def _decoder_block_targets(model) -> list[str]:
    """The decoder-layer class names (what transformers never splits across devices)."""
    names = list(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"{type(model).__name__} names no decoder-layer class (_no_split_modules is empty), so the "
                         "Linears inside its blocks can't be targeted without also pruning lm_head.")
    return names


def _check_nm_fits(model, block_classes: list[str], m: int) -> None:
    """Every Linear inside a decoder block must have in_features divisible by M."""
    import torch

    for name, module in model.named_modules():
        if type(module).__name__ not in block_classes:
            continue
        for sub, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear) and layer.in_features % m:
                raise ValueError(f"{name}.{sub} has in_features={layer.in_features}, not a multiple of M={m}: "
                                 f"its inputs can't be split into groups of {m}; use mask_structure='0:0'.")


def prune_with_llmcompressor(model_dir, calibration, *, method: str = "sparsegpt", sparsity: float = 0.5,
                             mask_structure: str = "0:0", block_size: int = 128, dampening_frac: float = 0.01,
                             out_dir=None, dtype="float32"):
    """Prune every nn.Linear in the decoder blocks (lm_head excluded) with llm-compressor's oneshot.

    method: "sparsegpt" (SparseGPTModifier) or "wanda" (WandaPruningModifier).
    sparsity: fraction of each layer's weights set to zero, in [0, 1); with an N:M mask_structure
      it must equal N/M. mask_structure: "0:0" (unstructured), "2:4" or "4:8" (N zeros in every M
      consecutive inputs of each row). block_size, dampening_frac: SparseGPT only.
    dtype: the dtype the model is loaded and pruned in (float32, as course_lib.lm.models.load_model on CPU).
    out_dir: if given, the pruned model is also saved there (dense float tensors, zeros included).
    Returns (model, ToolRun): the pruned model in eval mode, and the run's time (load + calibrate +
    prune, the library import excluded), settings and captured log.
    See the module docstring for what the library does and where it differs from course_lib.prune.
    """
    import torch

    n, m = _check_settings(method, sparsity, mask_structure, block_size, dampening_frac)
    if out_dir is not None:
        model_dir, out_dir = _check_dirs(model_dir, out_dir)
    else:
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise ValueError(f"{model_dir} is not a saved Hugging Face model (no config.json); give a local "
                             "directory, e.g. course_lib.lm.models.BUNDLED_DIR.")
    calibration = check_tool_calibration(calibration)
    settings = dict(method=method, sparsity=float(sparsity), mask_structure=mask_structure,
                    n_samples=calibration.shape[0], seq_len=calibration.shape[1], dtype=str(dtype).replace("torch.", ""))
    if method == "sparsegpt":
        settings.update(block_size=block_size, dampening_frac=dampening_frac)
    with _quiet() as log:
        version, dataset = llmcompressor_dataset(calibration)
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
        from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, str(dtype).replace("torch.", "")))
        targets = _decoder_block_targets(model)
        if m:
            _check_nm_fits(model, targets, m)
        common = dict(sparsity=float(sparsity), mask_structure=mask_structure, targets=targets)
        if method == "sparsegpt":
            recipe = SparseGPTModifier(**common, block_size=block_size, dampening_frac=dampening_frac)
        else:
            recipe = WandaPruningModifier(**common)
        oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=calibration.shape[0],
                max_seq_length=calibration.shape[1], shuffle_calibration_samples=False)
        if out_dir is not None:  # plain safetensors (zeros stored) and llm-compressor's recipe.yaml
            model.save_pretrained(str(out_dir))
            AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out_dir))
        seconds = time.perf_counter() - start
    settings["targets"] = targets
    return model.eval(), ToolRun(out_dir, seconds, "llmcompressor", version, settings, log.getvalue())


def sparsity_report(model, *, n: int = 2, m: int = 4) -> list[dict]:
    """One row per nn.Linear (lm_head included): {"layer", "shape", "zeros", "2:4"}.

    zeros: the fraction of weights that are exactly 0. "2:4" (or f"{n}:{m}"): True when every group of
    m consecutive weights along the input dimension holds at least n zeros (False when in_features
    is not a multiple of m).
    """
    import torch

    if not (isinstance(n, int) and isinstance(m, int)) or not 0 < n <= m:
        raise ValueError(f"need integers 0 < n <= m for the n:m check, got n={n!r}, m={m!r}.")
    rows = []
    for name, layer in model.named_modules():
        if not isinstance(layer, torch.nn.Linear):
            continue
        zero = layer.weight.detach() == 0
        out_f, in_f = zero.shape
        pattern = in_f % m == 0 and bool((zero.reshape(out_f, in_f // m, m).sum(-1) >= n).all())
        rows.append({"layer": name, "shape": f"{out_f}x{in_f}", "zeros": zero.float().mean().item(),
                     f"{n}:{m}": pattern})
    if not rows:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to report on.")
    return rows
