"""course_lib.prune.teach: sizes, the published table, per-layer errors, the sweep's rows."""

import pytest
import torch

from course_lib.lm.models import tiny_model
from course_lib.lm.perplexity import Protocol
from course_lib.prune.teach import (bits_per_weight, layer_error_rows, load_published, published_vs_ours,
                                    relative_error)


def test_bits_per_weight():
    assert bits_per_weight(16) == 16 and bits_per_weight(16, "2:4") == 9 and bits_per_weight(4, "2:4") == 3
    assert bits_per_weight(16, "50%") == 9 and bits_per_weight(4, "50%") == 3
    assert bits_per_weight(4, group_size=128) == 4.125
    with pytest.raises(ValueError, match="pattern"):
        bits_per_weight(4, "1:4")


def test_published_table_and_side_by_side():
    pub = load_published()
    assert pub["dense"] == 5.12 and len(pub["rows"]) == 9 and "locuslab/wanda" in pub["source"]
    rows = [{"method": "magnitude", "target": "50%", "ppl": 60.0}, {"method": "wanda", "target": "2:4", "ppl": 90.0}]
    out = published_vs_ours(rows, 45.0, pub)
    assert [(r["pattern"], r["method"]) for r in out] == [("50%", "magnitude"), ("2:4", "wanda")]
    assert out[0]["ours / dense"] == pytest.approx(60 / 45) and out[0]["LLaMA-2-7B / dense"] == pytest.approx(14.89 / 5.12)


def test_relative_error():
    W, X = torch.randn(8, 16), torch.randn(100, 16)
    assert relative_error(W, W, X) == 0 and relative_error(W, torch.zeros_like(W), X) == pytest.approx(1.0)


def test_layer_error_rows_order_on_a_tiny_model():
    model = tiny_model("llama")
    calib = torch.randint(0, 4096, (4, 64), generator=torch.Generator().manual_seed(0))
    rows = layer_error_rows(model, calib, ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"])
    assert len(rows) == 2 and all(0 < r["sparsegpt"] < min(r["magnitude"], r["wanda"]) < 1 for r in rows)


def _rec24_rows():
    rows = []
    for shape, scale in (("a", 1.0), ("b", 1.2), ("c", 0.8)):
        for m in (1, 16, 2048, 8192):
            rows += [{"shape": shape, "dtype": "float16", "tokens": m, "format": "2:4 cuSPARSELt",
                      "speedup": 0.1 * scale * m ** 0.25, "kernel_speedup": 0.5 * scale + m / 8192},
                     {"shape": shape, "dtype": "float16", "tokens": m, "format": "dense 50% zeros", "speedup": 1.0,
                      "kernel_speedup": 1.0},
                     {"shape": shape, "dtype": "float16", "tokens": m, "format": "CSR 50%",
                      "speedup": None if m == 8192 else 0.4 / m, "kernel_speedup": None},
                     {"shape": shape, "dtype": "bfloat16", "tokens": m, "format": "CSR 50%", "speedup": 99.0,
                      "kernel_speedup": 99.0}]
    return rows


def test_sparse24_overview_takes_the_median_over_shapes_and_skips_untimed_cells():
    from course_lib.prune.teach import sparse24_mlp_rows, sparse24_overview

    table = {r["linear layer"]: r for r in sparse24_overview(_rec24_rows())}
    assert table["2:4, kernels only"]["M=1"] == pytest.approx(0.5 + 1 / 8192)  # median of scales 0.8, 1.0, 1.2
    assert table["2:4, PyTorch eager"]["M=16"] == pytest.approx(0.2)
    assert table["CSR 50% (cuSPARSE)"]["M=16"] == pytest.approx(0.025)      # fp16 only: the bf16 99s are left out
    assert table["CSR 50% (cuSPARSE)"]["M=8192"] is None                    # not timed there
    mlp = [{"block": "B", "tokens": m, "format": f, "speedup": s, "kernel_speedup": k}
           for m in (1, 2048) for f, s, k in (("dense", 1.0, 1.0), ("2:4 cuSPARSELt", 0.1 * m, 0.8 + m / 4096))]
    rows = sparse24_mlp_rows(mlp)
    assert [r["MLP block"] for r in rows] == ["B, kernels only", "B, PyTorch eager"]
    assert rows[0]["M=2048"] == pytest.approx(1.3) and rows[1]["M=1"] == pytest.approx(0.1)
