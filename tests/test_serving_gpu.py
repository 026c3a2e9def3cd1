"""Chapter 13 on the GPU (pytest -m gpu): the engine on CUDA, with and without CUDA graphs for decode steps."""

import pytest
import torch

from course_lib.lm.models import load_model
from course_lib.serving import Engine, EngineConfig, SamplingParams
from course_lib.serving.speculative import greedy_generate, speculative_generate
from course_lib.serving.draft import load_draft

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPTS = ["The king said", "Once upon a time there was", "It was a dark and stormy night; the rain fell in torrents",
           "Call me", "And so, my friends, we shall meet again upon the field"]


@pytest.fixture(scope="module")
def course():
    model, tok = load_model(device="cuda", dtype=torch.float32)
    return model, tok, [tok.encode(p) for p in PROMPTS]


def test_cuda_graphs_equal_eager_and_transformers(course):
    model, tok, ids = course
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    ref = [model.generate(torch.tensor([p], device="cuda"), max_new_tokens=24, min_new_tokens=24, do_sample=False,
                          pad_token_id=0)[0, len(p):].tolist() for p in ids]
    outs = {}
    for graphs in (False, True):
        engine = Engine(model, tok, EngineConfig(num_blocks=64, block_size=8, max_num_seqs=3, cuda_graphs=graphs))
        outs[graphs] = [r.output_ids for r in engine.generate(ids, params)]
        assert (engine.runner.graph_steps > 0) == graphs
        assert engine.blocks.num_free == engine.num_blocks
    assert outs[True] == outs[False] == ref


def test_speculative_on_cuda_is_the_greedy_output(course):
    model, tok, ids = course
    draft = load_draft("cuda", torch.float32)
    for p in ids:
        assert speculative_generate(model, draft, p, 32, k=3).tokens == greedy_generate(model, p, 32).tokens
