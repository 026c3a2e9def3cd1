"""course_lib.prune.structured*, recover: head/channel scores, physical slicing == masking, budgets, recovery."""

from __future__ import annotations

import copy

import pytest
import torch

from course_lib.lm import models
from course_lib.prune.recover import LoRALinear, recover
from course_lib.prune.structured import (block_params, count_params, head_counts, mask_heads, mask_mlp_channels,
                                         mlp_widths, prune_heads, prune_mlp_channels)
from course_lib.prune.structured_scores import attention_mass, head_importance, mlp_importance, to_kv_groups
from course_lib.prune.structured_select import structured_prune

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCHS = ("llama", "qwen2", "mistral")


def _ids(n=3, seq=24, seed=0):
    return torch.randint(1, 4096, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def bundled():
    return models.load_model()


# --- the seed's score --------------------------------------------------------------------------

def test_seed_attention_mass_is_the_same_for_every_head(bundled):
    """Softmax rows sum to 1, so sum(attention probabilities) = n_samples * seq_len for every head."""
    # float32 on any device: on CUDA the model loads in bf16, whose probabilities sum to 1 only within ~2^-8 per row
    _, tok = bundled
    model = models.load_model(dtype=torch.float32)[0]
    from course_lib.lm.tokens import calibration_batches

    calib = calibration_batches(tok, 4, 64)
    impl = model.config._attn_implementation
    scores = attention_mass(model, calib)
    assert model.config._attn_implementation == impl  # switched to eager and back
    assert scores.shape == (8, 4)
    torch.testing.assert_close(scores, torch.full_like(scores, 4 * 64.0), rtol=1e-6, atol=1e-3)
    assert scores.std().item() < 1e-3 * scores.mean().item()  # no ranking possible
    taylor = head_importance(model, calib, method="taylor")
    assert taylor.std().item() > 0.05 * taylor.mean().item()  # a real score does tell heads apart
    torch.testing.assert_close(to_kv_groups(scores, 2), torch.full((8, 2), 2 * 4 * 64.0, dtype=scores.dtype),
                               rtol=1e-6, atol=1e-3)


# --- slicing equals masking --------------------------------------------------------------------

CASES = {  # (heads, mode, channels): ragged on purpose (layer 0 and 1 end with different shapes)
    "kv_group": ({0: [1]}, "kv_group", {}),
    "query": ({0: [0, 2], 1: [3, 1]}, "query", {}),
    "mlp": ({}, "kv_group", {0: [0, 5, 77], 1: list(range(0, 256, 2))}),
    "both": ({1: [0]}, "kv_group", {0: list(range(100))}),
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("case", list(CASES))
def test_sliced_model_equals_masked_model(arch, impl, case):
    heads, mode, channels = CASES[case]
    model = models.tiny_model(arch)
    model.set_attn_implementation(impl)
    sliced, masked = copy.deepcopy(model), copy.deepcopy(model)
    prune_heads(sliced, heads, mode=mode)
    prune_mlp_channels(sliced, channels)
    mask_heads(masked, heads, mode=mode)
    mask_mlp_channels(masked, channels)
    x = _ids(2, 16)
    pad = torch.ones_like(x)
    pad[1, :5] = 0  # a padding mask sends SDPA through repeat_kv(num_key_value_groups)
    with torch.no_grad():
        for mask in (None, pad):
            out, ref = sliced(x, attention_mask=mask).logits, masked(x, attention_mask=mask).logits
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            assert (out - model(x, attention_mask=mask).logits).abs().max() > 1e-3  # pruning changed something
    assert count_params(sliced) < count_params(model) == count_params(masked)


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_drops_by_the_coupled_group_sizes(arch):
    model = models.tiny_model(arch)
    c = model.config
    H, d = c.hidden_size, c.hidden_size // c.num_attention_heads
    G = c.num_attention_heads // c.num_key_value_heads
    qkv_bias = int(arch == "qwen2")  # Qwen2: q/k/v biases, no o bias
    query_head = d * H + qkv_bias * d + H * d           # q rows (+ bias) + o columns
    kv_group = G * query_head + 2 * (d * H + qkv_bias * d)
    channel = 3 * H                                     # gate row, up row, down column
    before = count_params(model)
    prune_heads(model, {0: [1]}, mode="kv_group")
    assert before - count_params(model) == kv_group
    prune_heads(model, {1: [1, 2]}, mode="query")
    assert before - count_params(model) == kv_group + 2 * query_head
    prune_mlp_channels(model, {0: [3, 4, 5], 1: [0]})
    assert before - count_params(model) == kv_group + 2 * query_head + 4 * channel
    assert head_counts(model) == [(G, 1), (2, 2)]
    assert mlp_widths(model) == [c.intermediate_size - 3, c.intermediate_size - 1]
    attn = model.model.layers[1].self_attn
    assert attn.num_key_value_groups == 1 and attn.q_proj.out_features == 2 * d


def test_pruned_model_generates_with_its_cache():
    model = models.tiny_model("llama")
    prune_heads(model, {0: [0, 2]}, mode="query")
    prune_heads(model, {1: [1]}, mode="kv_group")
    prune_mlp_channels(model, {1: list(range(50))})
    prompt = _ids(1, 6)
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False)
    uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (1, 12)
    assert torch.equal(cached, uncached)


# --- importance scores -------------------------------------------------------------------------

def _manual_grads(model, calib):
    """dL/dW of the mean LM loss over all sequences, computed in one pass."""
    model.zero_grad()
    model(input_ids=calib, labels=calib).loss.backward()
    return lambda p: (p.detach() * p.grad).abs()


def test_taylor_scores_equal_hand_computed_w_times_grad_sums():
    model = models.tiny_model("qwen2")  # has q/k/v biases
    calib = _ids(4, 16)
    heads = head_importance(model, calib, method="taylor", level="query", batch_size=2)
    groups = head_importance(model, calib, method="taylor", level="kv_group", batch_size=2)
    channels = mlp_importance(model, calib, method="taylor", batch_size=3)
    s = _manual_grads(model, calib)
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    d = attn.head_dim
    q = lambda h: (s(attn.q_proj.weight)[h * d:(h + 1) * d].sum() + s(attn.q_proj.bias)[h * d:(h + 1) * d].sum()
                   + s(attn.o_proj.weight)[:, h * d:(h + 1) * d].sum())
    kv = lambda g: sum(s(p)[g * d:(g + 1) * d].sum() for p in (attn.k_proj.weight, attn.k_proj.bias,
                                                                 attn.v_proj.weight, attn.v_proj.bias))
    torch.testing.assert_close(heads[1, 3], q(3), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(groups[1, 1], q(2) + q(3) + kv(1), rtol=1e-4, atol=1e-7)
    c = 17
    hand = s(mlp.gate_proj.weight)[c].sum() + s(mlp.up_proj.weight)[c].sum() + s(mlp.down_proj.weight)[:, c].sum()
    torch.testing.assert_close(channels[1, c], hand, rtol=1e-4, atol=1e-7)


def test_magnitude_and_activation_scores_by_hand():
    model = models.tiny_model("llama")
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    d = attn.head_dim
    mag = head_importance(model, method="magnitude", level="kv_group")
    w = torch.cat([attn.q_proj.weight[0:2 * d].flatten(), attn.o_proj.weight[:, 0:2 * d].flatten(),
                   attn.k_proj.weight[0:d].flatten(), attn.v_proj.weight[0:d].flatten()])
    torch.testing.assert_close(mag[0, 0], w.norm(), rtol=1e-5, atol=0)
    calib = _ids(2, 8)
    seen = []
    handle = model.model.layers[0].post_attention_layernorm.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(calib)
    handle.remove()
    x = seen[0]
    h = torch.nn.functional.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
    act = mlp_importance(model, calib, method="activation")
    torch.testing.assert_close(act[0].float(), h.abs().mean(dim=(0, 1)), rtol=1e-5, atol=1e-7)


# --- the convenience pipeline ------------------------------------------------------------------

@pytest.mark.parametrize("target, mode, scope", [("both", "kv_group", "global"), ("mlp", "kv_group", "per_layer"),
                                                 ("heads", "query", "global"), ("both", "query", "per_layer")])
def test_structured_prune_meets_the_budget(target, mode, scope):
    model = models.tiny_model("llama")
    ref = copy.deepcopy(model)
    blocks = block_params(model)
    ratio = 0.1 if target == "heads" else 0.3
    report = structured_prune(model, _ids(2, 16), target=target, ratio=ratio, scope=scope, mode=mode)
    assert report.block_params_before == blocks and report.block_params_after == block_params(model)
    assert report.total_params_before - report.total_params_after == blocks - block_params(model)
    assert ratio - 0.05 < report.fraction_removed <= ratio  # at most ratio, within a unit or two
    summary = report.summary()
    assert summary["blocks removed"] == report.fraction_removed and summary["params after"] == count_params(model)
    assert sum(row["params removed"] for row in report.rows()) == blocks - block_params(model)
    for i, row in enumerate(report.rows()):
        if scope == "per_layer":
            assert row["fraction"] <= ratio
    assert all(q >= kv >= 1 for q, kv in head_counts(model)) and min(mlp_widths(model)) >= 1
    if mode == "query":
        assert all(q % kv == 0 for q, kv in head_counts(model))
    # the report's indices reproduce the model by masking
    prune = copy.deepcopy(ref)
    mask_heads(ref, report.heads, mode=mode)
    mask_mlp_channels(ref, report.channels)
    prune_heads(prune, report.heads, mode=mode)
    prune_mlp_channels(prune, report.channels)
    x = _ids(1, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref(x).logits, rtol=1e-5, atol=1e-5)


def test_structured_prune_takes_the_lowest_scores():
    model = models.tiny_model("llama")
    calib = _ids(2, 16)
    scores = mlp_importance(model, calib, method="magnitude")
    report = structured_prune(model, calib, target="mlp", ratio=0.2, importance="magnitude", scope="per_layer")
    for layer, removed in report.channels.items():
        kept = sorted(set(range(scores.shape[1])) - set(removed))
        assert scores[layer, removed].max() <= scores[layer, kept].min()


# --- errors ------------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    model = models.tiny_model("llama")
    calib = _ids(2, 8)
    for ratio in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            structured_prune(model, calib, ratio=ratio)
    with pytest.raises(ValueError, match="at most"):
        structured_prune(model, calib, target="heads", ratio=0.3)
    with pytest.raises(ValueError, match="keep at"):
        prune_heads(model, {0: [0, 1]}, mode="kv_group")
    with pytest.raises(ValueError, match="out of range"):
        prune_heads(model, {0: [2]}, mode="kv_group")
    with pytest.raises(ValueError, match="out of range"):
        prune_heads(model, {5: [0]}, mode="kv_group")
    with pytest.raises(ValueError, match="duplicate"):
        prune_mlp_channels(model, {0: [3, 3]})
    with pytest.raises(ValueError, match="same number of query heads"):
        prune_heads(model, {0: [0, 1]}, mode="query")  # both from group 0
    with pytest.raises(ValueError, match="mode must be"):
        prune_heads(model, {0: [0]}, mode="heads")
    with pytest.raises(ValueError, match="keep at"):
        prune_mlp_channels(model, {1: list(range(256))})
    with pytest.raises(TypeError, match="token ids"):
        structured_prune(model, [[1, 2, 3]], ratio=0.1)
    with pytest.raises(TypeError, match=r"token ids as torch.long.*calibration.long\(\)"):
        structured_prune(model, torch.rand(2, 8), ratio=0.1)
    with pytest.raises(ValueError, match="importance"):
        structured_prune(model, calib, target="both", importance="activation", ratio=0.1)
    with pytest.raises(ValueError, match="llama, qwen2, mistral"):
        prune_heads(models.tiny_model("opt"), {0: [0]})
    assert count_params(model) == count_params(models.tiny_model("llama"))  # nothing was half-applied


# --- recovery ----------------------------------------------------------------------------------

def test_lora_merge_keeps_the_function():
    torch.manual_seed(0)
    lora = LoRALinear(torch.nn.Linear(8, 6), rank=2, alpha=4.0)
    torch.nn.init.normal_(lora.lora_b)
    x = torch.randn(3, 8)
    with torch.no_grad():
        before = lora(x)
        merged = lora.merged()
        torch.testing.assert_close(merged(x), before, rtol=1e-5, atol=1e-6)
    assert type(merged) is torch.nn.Linear


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_recovery_lowers_the_training_loss(bundled, lora_rank):
    _, tok = bundled
    from course_lib.lm.tokens import token_stream

    model = models.tiny_model("llama")  # same 4096-token vocabulary as the course tokenizer
    prune_heads(model, {0: [1]}, mode="kv_group")
    prune_mlp_channels(model, {1: list(range(64))})
    shapes = {n: p.shape for n, p in model.named_parameters()}
    kwargs = dict(steps=20, lr=3e-3 if lora_rank is None else 2e-2, batch_size=2, seq_len=32, seed=1,
                  lora_rank=lora_rank, eval_tokens=1024, stream=token_stream("calibration", tok))
    result = recover(model, tok, **kwargs)
    assert len(result.losses) == 20
    assert sum(result.losses[-5:]) / 5 < sum(result.losses[:5]) / 5 - 0.1  # training loss goes down
    assert result.val_loss["after"] < result.val_loss["before"] - 0.15  # and so does held-out loss
    assert {n: p.shape for n, p in model.named_parameters()} == shapes  # LoRA merged back: plain nn.Linear
    assert all(p.requires_grad for p in model.parameters())
    assert model.generate(_ids(1, 4), max_new_tokens=3, do_sample=False).shape == (1, 7)
    again = models.tiny_model("llama")
    prune_heads(again, {0: [1]}, mode="kv_group")
    prune_mlp_channels(again, {1: list(range(64))})
    assert recover(again, tok, **kwargs).losses == result.losses  # deterministic on CPU


def test_seed_llm_pruner_stops_at_its_undefined_threshold():
    """Seed 003 §6.3.2's llm_pruner computes the importance, then compares with a `threshold` nobody defines."""
    from course_lib.prune.structured_select import seed_llm_pruner, seed_llm_pruner_helpers

    model = models.tiny_model("llama")
    helpers = seed_llm_pruner_helpers(model, _ids(), tokenizer=None)
    scores = helpers["compute_neuron_importance"](model)
    groups = helpers["identify_dependency_groups"](model)
    widths = [layer.mlp.gate_proj.out_features for layer in model.model.layers]
    assert len(scores) == len(groups) == sum(widths) and all(s >= 0 for s in scores.values())
    before = count_params(model)
    with pytest.raises(NameError, match="threshold"):
        seed_llm_pruner(model, 0.2, **helpers)
    assert count_params(model) == before  # nothing was pruned
