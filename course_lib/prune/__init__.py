"""Chapter 07: pruning.

    unstructured   magnitude and Wanda masks, N:M patterns (no weight update)
    sparsegpt      SparseGPT for one matrix (GPTQ's machinery, prune instead of round)
    model          prune_model: every linear layer of a model, magnitude / Wanda / SparseGPT
    structured     slice whole heads (GQA-aware) and MLP channels out of the model
    structured_scores, structured_select   which heads/channels: attention mass (the seed's), magnitude, Taylor
    recover        a short recovery fine-tune (full or LoRA, merged back)
    tools          the same with llm-compressor
    sparse_bench   where sparsity is faster: dense vs CSR on CPU, 2:4 on the GPU
    teach          what the notebook measures
"""

from .model import METHODS, PruneReport, model_sparsity, prune_model
from .sparsegpt import SparseGPTResult, sparsegpt_prune_weight
from .structured import mask_heads, mask_mlp_channels, prune_heads, prune_mlp_channels
from .structured_select import StructuredReport, structured_prune
from .unstructured import magnitude_mask, nm_violations, parse_nm, sparsity_of, wanda_mask

__all__ = ["METHODS", "PruneReport", "SparseGPTResult", "StructuredReport", "magnitude_mask", "mask_heads",
           "mask_mlp_channels", "model_sparsity", "nm_violations", "parse_nm", "prune_heads", "prune_mlp_channels",
           "prune_model", "sparsegpt_prune_weight", "sparsity_of", "structured_prune", "wanda_mask"]
