"""Mixed precision and GGUF (chapter 06).

Modules:

* ``sensitivity``  every linear layer quantized with GPTQ at every candidate setting (bits, group size) and scored
                   as EXL2 scores it (relative output error) and end to end (KL divergence of the model's output);
                   bits counted as the checkpoint stores them; cached once per model.
* ``allocate``     one setting per layer under a bits-per-weight budget: exact (dynamic programming), greedy, and
                   simulated annealing (EXL2's solver); a budget outside the feasible range gets the range.
* ``checkpoint``   an allocation applied with GPTQ and saved as a compressed-tensors checkpoint (one config group
                   per setting) that transformers reloads.
* ``kquants``      GGUF's block formats from their layouts: bytes per block and bits per weight of each type, a Q4_K
                   super-block de-quantized from its 144 bytes (checked against the ``gguf`` package), and a simple
                   Q4_K quantizer, which the ``gguf`` package lacks (it writes no k-quants).
* ``gguf_io``      a Llama model written to a GGUF file with the ``gguf`` package (metadata, the BPE tokenizer with
                   its pre-tokenizer declared as "gpt-2", tensors renamed, q and k permuted for GGML's rotary
                   layout, 2-D weights in F16/Q8_0/Q4_0/...), which transformers reads back.
* ``llama_cpp``    llama.cpp itself through ``llama-cpp-python`` (optional, ``make llama-cpp``): its quantizer
                   (k-quants), tokens, perplexity, greedy ids and speed on the course's files.
* ``bench``, ``gguf_bench``  the recorded CPU experiments (``python -m course_lib.bench mixed`` / ``gguf``).
"""

from .allocate import (Allocation, allocate_annealing, allocate_dp, allocate_greedy, brute_force, feasible_range,
                       uniform)
from .sensitivity import SETTINGS, Measurement, Setting, measure, relative_output_error

__all__ = ["Allocation", "allocate_annealing", "allocate_dp", "allocate_greedy", "brute_force",
           "feasible_range", "uniform", "SETTINGS", "Measurement", "Setting", "measure", "relative_output_error"]
