"""Fine-tuning memory (course_lib.bnb.memory): the formula by hand, against peft, and against measured bytes."""

from __future__ import annotations

import pytest
import torch

from course_lib.bnb import memory as mem

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256)
BATCH, SEQ = 2, 32


def tiny_llama(dtype: torch.dtype = torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(max_position_embeddings=64, **SHAPE)).to(dtype)


def tiny_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, SHAPE["vocab_size"], (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids.clone()}


def with_lora(model, r: int = 8):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))


def formula_activations(checkpointing: bool, dtype_bytes: float = 4) -> float:
    s = SHAPE
    return mem.activation_bytes(BATCH, SEQ, s["hidden_size"], s["num_hidden_layers"], s["intermediate_size"],
                                s["num_attention_heads"], s["vocab_size"], checkpointing=checkpointing,
                                dtype_bytes=dtype_bytes, kv_heads=s["num_key_value_heads"])


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-3)


# ----------------------------------------------------------------------------- the formula by hand

def test_formula_parts_by_hand():
    counts = dict(linear_params=1000, other_params=100, lora_params=50, activations=7.0)
    full = mem.training_memory(method="full", weight_bytes=4, **counts)
    # every parameter trains: 1100 x (4 weight + 4 grad + 8 AdamW)
    assert (full.weights, full.adapters, full.gradients, full.optimizer) == (4400, 0, 4400, 8800)
    assert full.total == 4400 + 4400 + 8800 + 7
    mixed = mem.training_memory(method="full", weight_bytes=2, master_weights=True, **counts)
    assert mixed.total - 7 == 1100 * 16  # 2 + 2 + (4 master + 8 AdamW)

    lora = mem.training_memory(method="lora", weight_bytes=2, adapter_bytes=4, **counts)
    assert (lora.weights, lora.adapters, lora.gradients, lora.optimizer) == (2200, 200, 200, 400)

    qlora = mem.training_memory(method="qlora", weight_bytes=2, adapter_bytes=4, bits_per_param=4, **counts)
    assert qlora.weights == 1000 * 4 / 8 + 100 * 2
    assert mem.NF4_DQ_BITS == pytest.approx(4.127, abs=1e-3)
    assert mem.training_memory(method="qlora", **counts).weights == pytest.approx(1000 * 4.127 / 8 + 200, abs=0.1)

    assert mem.training_memory(method="lora", optimizer="adamw8bit", **counts).optimizer == 50 * 2
    assert mem.training_memory(method="lora", optimizer="sgd", **counts).optimizer == 0
    assert mem.training_memory(method="lora", grad_bytes=2, **counts).gradients == 100
    gb = full.gb()
    assert gb["total"] == pytest.approx(full.total / 1e9) and set(gb) == {"weights", "adapters", "gradients",
                                                                            "optimizer", "activations", "total"}


def test_qlora_65b_fits_in_48_gb_and_full_does_not_fit_in_700():
    claim = mem.qlora_65b_claim()
    full, lora, qlora = (claim[k].total / 1e9 for k in ("full", "lora", "qlora"))
    assert qlora < 48 < lora < 700 < full
    linear = 80 * (4 * 8192**2 + 3 * 8192 * 22016)
    assert claim["full"].weights == 2 * (linear + 2 * 32000 * 8192 + 161 * 8192)  # 65.29B parameters in bf16
    assert claim["qlora"].adapters == 2 * 80 * 64 * (4 * 2 * 8192 + 3 * (8192 + 22016))  # r (in + out), bf16


@pytest.mark.parametrize("kwargs, word", [
    (dict(method="prefix"), "method"),
    (dict(optimizer="adam9000"), "optimizer"),
    (dict(other_params=-1), "other_params"),
    (dict(lora_params=-5, method="lora"), "lora_params"),
    (dict(weight_bytes=0), "weight_bytes"),
])
def test_bad_input_is_a_clear_value_error(kwargs, word):
    with pytest.raises(ValueError, match=word):
        mem.training_memory(**{"linear_params": 1000, **kwargs})


def test_bad_activation_shapes_and_peft_models_are_refused():
    with pytest.raises(ValueError, match="batch"):
        mem.activation_bytes(0, 8, 64, 2, 128, 4, 256)
    with pytest.raises(ValueError, match="layers"):
        mem.activation_bytes(1, 8, 64, -2, 128, 4, 256)
    with pytest.raises(ValueError, match="base model"):
        mem.lora_param_count(with_lora(tiny_llama()), r=8)
    with pytest.raises(ValueError, match="No Linear"):
        mem.lora_param_count(SHAPE, r=8, target=["query"])


# ----------------------------------------------------------------------------- parameter counts

def test_lora_count_equals_peft_and_the_config_count():
    model = tiny_llama()
    linear, other = mem.param_split(model)
    assert linear + other == sum(p.numel() for p in model.parameters())
    assert other == 2 * 256 * 64 + 5 * 64  # embeddings, lm_head (untied), 2 x 2 + 1 RMSNorms
    from_module = mem.lora_param_count(model, r=8)
    assert from_module == mem.lora_param_count(model.config, r=8) == mem.lora_param_count(SHAPE, r=8)
    # per layer: q, o 8 x (64 + 64); k, v 8 x (64 + 32) (GQA); gate, up, down 8 x (64 + 128)
    assert from_module == 2 * 8 * (2 * 128 + 2 * 96 + 3 * 192)
    assert mem.lora_param_count(model, r=8, target=["q_proj", "v_proj"]) == 2 * 8 * (128 + 96)
    assert mem.lora_param_count(model, r=8, target="q_proj") == mem.lora_param_count(SHAPE, 8, "q_proj") == 2 * 8 * 128
    trainable, _ = with_lora(model, r=8).get_nb_trainable_parameters()
    assert trainable == from_module


def test_param_split_counts_a_tied_embedding_once():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=True, **SHAPE))
    linear, other = mem.param_split(model)
    assert other == 256 * 64 + 5 * 64
    assert linear + other == sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- measured

def test_full_fine_tuning_measured_bytes():
    model = tiny_llama()
    n, n_tensors = sum(p.numel() for p in model.parameters()), len(list(model.parameters()))
    got = mem.measure_training_step(model, tiny_batch(), adamw, device="cpu")
    assert got["trainable_params"] == n and got["trainable"] == 4 * n
    assert got["gradients"] == 4 * n  # fp32 gradients
    # AdamW: exp_avg and exp_avg_sq (fp32) per parameter, plus one fp32 `step` scalar per parameter tensor
    assert got["optimizer"] == 8 * n + 4 * n_tensors
    assert got["weights"] >= 4 * n and got["peak_allocated"] is None
    assert got["loss"] == pytest.approx(5.55, abs=0.3)  # about ln(256) for random weights


def test_lora_measured_bytes():
    model = with_lora(tiny_llama())
    adapters = mem.lora_param_count(tiny_llama(), r=8)
    n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    got = mem.measure_training_step(model, tiny_batch(), adamw, device="cpu")
    assert got["trainable_params"] == adapters
    assert got["gradients"] == 4 * adapters
    assert got["optimizer"] == 8 * adapters + 4 * n_tensors
    # frozen norms, embedding and lm_head save less; the adapters' T x r outputs add a little
    assert 0.8 < got["activations"] / formula_activations(False) < 1.0


def test_activation_formula_against_measured_saved_tensors():
    plain = mem.measure_training_step(tiny_llama(), tiny_batch(), adamw, device="cpu")["activations"]
    model = tiny_llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt = mem.measure_training_step(model, tiny_batch(), adamw, device="cpu")["activations"]
    assert 0 < ckpt < plain / 3
    assert formula_activations(False) / plain == pytest.approx(1.0, abs=0.02)  # counted the same tensors
    # the forward under checkpointing keeps the layer inputs; the formula adds the one layer recomputed in backward
    s = SHAPE
    one_layer = mem.layer_activation_bytes(BATCH * SEQ, s["hidden_size"], s["intermediate_size"],
                                           s["num_attention_heads"], s["num_key_value_heads"], 16, 4)
    assert (formula_activations(True) - one_layer) / ckpt == pytest.approx(1.0, abs=0.05)


def test_activation_formula_in_bf16():
    got = mem.measure_training_step(tiny_llama(torch.bfloat16), tiny_batch(), adamw, device="cpu")
    assert formula_activations(False, dtype_bytes=2) / got["activations"] == pytest.approx(1.0, abs=0.02)


def quantize_linears_4bit(model):
    """Every Linear but lm_head replaced by a bitsandbytes NF4 Linear4bit with double quantization."""
    import bitsandbytes as bnb

    for name, module, n_in, n_out in list(mem._targeted_linears(model, "all-linear")):
        parent, _, child = name.rpartition(".")
        q = bnb.nn.Linear4bit(n_in, n_out, bias=module.bias is not None, compute_dtype=torch.float32,
                              compress_statistics=True, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, compress_statistics=True,
                                     quant_type="nf4", blocksize=64)
        setattr(model.get_submodule(parent), child, q.to("cpu"))  # quantizes on the move
    model.is_loaded_in_4bit = True  # peft then wraps the layers with its bitsandbytes LoRA
    return model


def test_qlora_measured_weights_match_nf4_bits():
    pytest.importorskip("bitsandbytes")
    base = tiny_llama()
    linear, other = mem.param_split(base)
    adapters = mem.lora_param_count(base, r=8)
    model = with_lora(quantize_linears_4bit(base))
    got = mem.measure_training_step(model, tiny_batch(), adamw, device="cpu")
    assert got["trainable_params"] == adapters and got["optimizer"] > 8 * adapters
    quantized = got["weights"] - other * 4 - adapters * 4  # fp32 embeddings, norms, lm_head, adapters
    formula = mem.training_memory(linear_params=linear, method="qlora").weights
    # Each quantized layer also stores its codebooks: 16 NF4 values, 256 for the absmaxes, and one fp32 offset.
    # They are nothing next to a real layer's weights but a fifth of this tiny model's 4-bit bytes.
    codebooks = 2 * 7 * (16 + 256 + 1) * 4
    assert (quantized - codebooks) / formula == pytest.approx(1.0, abs=0.01)
    assert got["activations"] > 0 and got["loss"] == pytest.approx(5.55, abs=0.3)
