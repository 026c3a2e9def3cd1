"""Fixtures shared by the library-wrapper tests (test_gptq_tools.py, test_awq_tools.py): import them by name."""

from __future__ import annotations

import pytest
import torch

from course_lib.lm.models import load_model, load_tokenizer
from course_lib.lm.perplexity import perplexity
from course_lib.lm.tokens import calibration_batches

N_LAYERS = 8 * 7  # 8 decoder layers x (q, k, v, o, gate, up, down); lm_head stays float


@pytest.fixture(autouse=True, scope="module")
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def calibration(tokenizer):
    return calibration_batches(tokenizer, 16, 128)


@pytest.fixture(scope="module")
def float_ppl(tokenizer):
    model, _ = load_model()
    return perplexity(model, tokenizer).ppl
