"""Converting KV heads: duplication is exact, pooling averages groups, the cache shrinks accordingly."""

import pytest
import torch

from course_lib.kv.decoder import CourseDecoder
from course_lib.kv.gqa import attention_kind, convert_kv_heads, group_similarity
from course_lib.kv.sizes import cache_tensor_bytes
from course_lib.lm.models import tiny_model


def x():
    return torch.randint(1, 4096, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_duplicate_is_exact_and_pooling_back_restores(arch):
    m = tiny_model(arch).float()  # 4 query heads, 2 KV heads
    mha = convert_kv_heads(m, 4)
    with torch.no_grad():
        torch.testing.assert_close(mha(input_ids=x()).logits, m(input_ids=x()).logits, rtol=1e-5, atol=1e-5)
        back = convert_kv_heads(mha, 2)
        assert torch.equal(back(input_ids=x()).logits, m(input_ids=x()).logits)
    assert m.config.num_key_value_heads == 2 and mha.config.num_key_value_heads == 4  # the input is left alone


def test_pooling_averages_consecutive_heads_and_runs():
    m = tiny_model("qwen2").float()  # q/k/v biases too
    mqa = convert_kv_heads(m, 1)
    a, b = m.model.layers[0].self_attn, mqa.model.layers[0].self_attn
    d = a.head_dim
    torch.testing.assert_close(b.k_proj.weight, (a.k_proj.weight[:d] + a.k_proj.weight[d:]) / 2)
    torch.testing.assert_close(b.v_proj.bias, (a.v_proj.bias[:d] + a.v_proj.bias[d:]) / 2)
    with torch.no_grad():
        torch.testing.assert_close(CourseDecoder.from_hf(mqa)(x()).logits, mqa(input_ids=x()).logits,
                                   rtol=1e-5, atol=1e-5)
        assert (mqa(input_ids=x()).logits - m(input_ids=x()).logits).abs().max() > 1e-4
        caches = [cache_tensor_bytes(mm(input_ids=x(), use_cache=True).past_key_values) for mm in (m, mqa)]
    assert caches[0] == 2 * caches[1]


def test_identical_heads_pool_exactly():
    m = tiny_model("llama").float()
    for layer in m.model.layers:  # make both KV heads equal: pooling must then change nothing
        for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
            d = proj.out_features // 2
            proj.weight.data[d:] = proj.weight.data[:d]
    assert group_similarity(m) == pytest.approx(1.0)
    with torch.no_grad():
        torch.testing.assert_close(convert_kv_heads(m, 1)(input_ids=x()).logits, m(input_ids=x()).logits,
                                   rtol=1e-5, atol=1e-5)


def test_errors_and_kinds():
    m = tiny_model("llama")
    with pytest.raises(ValueError, match="multiple"):
        convert_kv_heads(m, 3)
    with pytest.raises(ValueError, match="q/k/v/o_proj"):
        convert_kv_heads(tiny_model("gpt2"), 1)
    assert [attention_kind(8, n) for n in (8, 2, 1)] == ["MHA", "GQA", "MQA"]
