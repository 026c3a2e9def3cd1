"""A Llama model written to GGUF by course_lib.mixed.gguf_io and read back by transformers: the same logits in
F16, errors ordered by the bits per weight, and the metadata and tokenizer that llama.cpp needs."""

from __future__ import annotations

import pytest
import torch

from course_lib.core.env import REPO_ROOT
from course_lib.mixed import gguf_io

gguf = pytest.importorskip("gguf", reason="the gguf package writes GGUF files (a course dependency)")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOKENIZER = REPO_ROOT / "data" / "course-model" / "tokenizer.json"


@pytest.fixture(scope="module")
def bundled():
    from course_lib.lm.models import load_model

    model, tokenizer = load_model(dtype=torch.float32)
    ids = tokenizer("To be, or not to be, that is the question", return_tensors="pt").input_ids
    with torch.no_grad():
        return model, ids, model(ids).logits


def _reload(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def test_written_files_load_back_with_errors_ordered_by_bits(bundled, tmp_path):
    model, ids, ref = bundled
    errors, sizes = {}, {}
    for kind in ("F16", "Q8_0", "Q4_0"):
        path = gguf_io.write_gguf(model, tmp_path / f"course-{kind}.gguf", kind, tokenizer_json=TOKENIZER)
        with torch.no_grad():
            errors[kind] = (_reload(path)(ids).logits - ref).abs().max().item()
        sizes[kind] = path.stat().st_size
    assert errors["F16"] < 1e-4                      # the q/k permutation undone by the reader: same model
    assert errors["F16"] < errors["Q8_0"] < errors["Q4_0"] < ref.abs().max().item()
    assert sizes["F16"] > 1.7 * sizes["Q8_0"] and sizes["Q8_0"] > 1.7 * sizes["Q4_0"]   # 16 : 8.5 : 4.5 bits


def test_metadata_and_tokenizer_fields(bundled, tmp_path):
    model = bundled[0]
    path = gguf_io.write_gguf(model, tmp_path / "course.gguf", "Q8_0", tokenizer_json=TOKENIZER)
    reader = gguf.GGUFReader(str(path))
    fields = reader.fields

    def scalar(key):
        f = fields[key]
        return f.parts[f.data[0]].tolist()[0]

    assert scalar("llama.block_count") == model.config.num_hidden_layers
    assert scalar("llama.attention.head_count_kv") == model.config.num_key_value_heads
    assert bytes(fields["tokenizer.ggml.pre"].parts[-1]).decode() == "gpt-2"
    assert len(fields["tokenizer.ggml.tokens"].data) == model.config.vocab_size
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output.weight", "blk.0.attn_q.weight", "blk.7.ffn_down.weight"} <= names
    assert {t.tensor_type.name for t in reader.tensors if t.name.endswith("attn_q.weight")} == {"Q8_0"}


def test_rotary_permutation_pairs_the_halves():
    import numpy as np

    w = np.arange(8)[:, None].repeat(2, axis=1)      # one head of dim 8: rows 0..7
    assert gguf_io.rotary_permute(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_bad_inputs(bundled, tmp_path):
    with pytest.raises(ValueError, match="K-quants need llama.cpp"):
        gguf_io.write_gguf(bundled[0], tmp_path / "x.gguf", "Q4_K")
    with pytest.raises(ValueError, match="No GGUF name"):
        gguf_io.gguf_name("model.layers.0.mlp.experts.0.w1.weight")


def test_a_tied_output_head_is_written_once_and_re_tied(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=4096, max_position_embeddings=128, tie_word_embeddings=True,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    path = gguf_io.write_gguf(model, tmp_path / "tied.gguf", "F16", tokenizer_json=TOKENIZER)
    names = {t.name for t in gguf.GGUFReader(str(path)).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    ids = torch.randint(1, 4096, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        got = _reload(path)(ids).logits
    assert (got - ref).abs().max().item() < 1e-2 * ref.abs().max().item()
