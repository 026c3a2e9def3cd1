"""Save an AWQ-quantized model as an AWQ ("GEMM") checkpoint that transformers loads.

    report = awq_quantize_model(model, calib, bits=4, group_size=128)
    save_awq_checkpoint(model, report, "out/course-model-awq", tokenizer=tok)
    qmodel = load_awq_checkpoint("out/course-model-awq")     # transformers; gptqmodel provides the layers

The format is the one AutoAWQ introduced ("version": "gemm") and GPTQModel and vLLM read. For each
quantized linear layer (in_features = K, out_features = N, G = K / group_size groups):

  qweight  int32 (K, N / 8)   row k holds the 4-bit codes of input k for all N outputs, 8 per word;
                              inside a word the 8 outputs are interleaved in the order 0 2 4 6 1 3 5 7
                              (nibble j holds output AWQ_ORDER[j]), which suits the CUDA kernel's unpacking
  qzeros   int32 (G, N / 8)   the zero point of each group and output, packed the same way (no "minus one",
                              unlike the GPTQ v1 format)
  scales   float16 (G, N)     one scale per group and output

and w[n, k] = scales[g, n] * (code[k, n] - zero[g, n]) with g = k // group_size. Compared with the GPTQ
format (course_lib.gptq.qlinear): the codes are packed along the *output* dimension instead of the
input dimension, there is no g_idx (AWQ never reorders columns) and zeros are stored as they are.
The tensors of the same sizes, though: qweight, qzeros and scales take the same bytes in both formats,
so the same model differs by g_idx alone (``as_gptq_report`` writes it both ways; ``bytes_by_part``).
Every tensor that stays float (embeddings, norms, lm_head) is written in 16 bits (bfloat16 by
default), as chapter 03's GPTQ export and the bundled checkpoint do.
transformers 5.17 reads the format only through gptqmodel (its AWQ quantizer imports it); on CPU gptqmodel
picks a torch kernel that unpacks and dequantizes inside each matmul. Only 4 bits are written: the GEMM
format and the kernels that read it are 4-bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..gptq.core import GPTQResult
from ..gptq.export import float_tensors, write_checkpoint
from ..gptq.model import GPTQReport
from ..quant.affine import QTensor, dequantize
from .model import AWQReport

AWQ_BITS = 4
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # what the float tensors may be written in
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble j of a word holds output column AWQ_ORDER[j] of its 8
_PER_WORD = 32 // AWQ_BITS


def pack_awq(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit codes (rows, N) -> int32 words (rows, N / 8) in AWQ's interleaved order."""
    rows, n = codes.shape
    if n % _PER_WORD:
        raise ValueError(f"AWQ packs 8 outputs per int32 word; {n} outputs is not a multiple of 8.")
    if codes.min() < 0 or codes.max() > 15:
        raise ValueError("AWQ codes must be unsigned 4-bit integers in [0, 15].")
    c = codes.to(torch.int64).reshape(rows, n // _PER_WORD, _PER_WORD)[..., list(AWQ_ORDER)]
    shifts = torch.arange(0, 32, AWQ_BITS, device=codes.device)
    words = (c << shifts).sum(dim=-1)                        # < 2^32: fits int64, then wraps into int32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_awq(words: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_awq: int32 words (rows, N / 8) -> int64 codes (rows, N)."""
    shifts = torch.arange(0, 32, AWQ_BITS, device=words.device)
    nibbles = (words.to(torch.int64)[..., None] >> shifts) & 0xF  # nibble j = output AWQ_ORDER[j]
    codes = torch.empty_like(nibbles)
    codes[..., list(AWQ_ORDER)] = nibbles
    return codes.reshape(words.shape[0], -1)


def awq_tensors(qt: QTensor) -> dict[str, torch.Tensor]:
    """qweight, qzeros and scales of one layer from its QTensor (codes (N, K), scale and zero (N, G, 1))."""
    if qt.bits != AWQ_BITS or qt.granularity not in ("group", "channel"):
        raise ValueError(f"AWQ checkpoints hold 4-bit weights with a scale per group or channel; got {qt.bits}-bit "
                         f"{qt.granularity} quantization.")
    codes = qt.q.to(torch.int64)
    zeros = qt.zero.reshape(qt.shape[0], -1).round().to(torch.int64)
    if qt.symmetric:  # signed codes in [-8, 7] with zero 0 -> unsigned codes with zero point 8
        codes, zeros = codes + 8, zeros + 8
    return {"qweight": pack_awq(codes.T.contiguous()),
            "qzeros": pack_awq(zeros.T.contiguous()),
            "scales": qt.scale.reshape(qt.shape[0], -1).T.to(torch.float16).contiguous()}


def quantization_config(report: AWQReport) -> dict:
    """The quantization_config entry of config.json (keys as transformers' AwqConfig)."""
    return {"quant_method": "awq", "bits": AWQ_BITS, "group_size": report.group_size or -1, "zero_point": True,
            "version": "gemm", "modules_to_not_convert": ["lm_head"], "meta": {"quantizer": ["course_lib.awq"]}}


@torch.no_grad()
def save_awq_checkpoint(model: nn.Module, report: AWQReport, out_dir: str | Path, tokenizer=None, *,
                        dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write `model` (quantized by awq_quantize_model, which produced `report`) to `out_dir` in the AWQ
    GEMM format; returns the directory. Needs bits=4.

    dtype: the dtype of the tensors that stay float (embeddings, norms, lm_head), bfloat16 by default like
    the bundled checkpoint and chapter 03's GPTQ export; config.json records it. The format's scales are
    float16 whatever dtype is.
    """
    if not isinstance(report, AWQReport) or not report.codes:
        raise TypeError("save_awq_checkpoint needs the AWQReport returned by awq_quantize_model(model, ...).")
    if report.bits != AWQ_BITS:
        raise ValueError(f"The AWQ format stores 4-bit weights; the model was quantized to {report.bits} bits. "
                         "Quantize with bits=4 to export (3-bit results stay in memory as fake-quantized weights).")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(str, FLOAT_DTYPES))} for the float tensors, got "
                         f"{dtype!r}; torch.bfloat16 (the default) halves them against float32.")
    quantized = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)} - {"lm_head"}
    if set(report.codes) != quantized:
        raise ValueError("save_awq_checkpoint: the AWQ format quantizes every linear layer except lm_head; this "
                         f"report covers {len(report.codes)} of {len(quantized)} (was skip= changed?).")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.to(dtype) if t.is_floating_point() else t
               for k, t in float_tensors(model, set(report.codes)).items()}
    for name, qt in report.codes.items():
        if not torch.equal(dequantize(qt), model.get_submodule(name).weight):
            raise ValueError(f"{name}: the model's weight is not the AWQ result in the report (was the model changed "
                             "after quantization?); export right after awq_quantize_model.")
        for buf, t in awq_tensors(qt).items():
            tensors[f"{name}.{buf}"] = t.to("cpu")
    write_checkpoint(model, tensors, quantization_config(report), out, tokenizer)
    config_file = out / "config.json"  # the dtype the float tensors were written in, not the model's in memory
    config = json.loads(config_file.read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def as_gptq_report(report: AWQReport) -> GPTQReport:
    """The same codes, scales and zero points as a GPTQReport, for save_gptq_checkpoint: the same quantized
    model written in the GPTQ format, to compare the two formats byte for byte (g_idx is the plain
    order: AWQ never reorders columns). Its GPTQ settings (act-order, dampening) describe no GPTQ run."""
    if not isinstance(report, AWQReport) or not report.codes:
        raise TypeError("as_gptq_report needs the AWQReport returned by awq_quantize_model(model, ...).")
    results = {}
    for name, qt in report.codes.items():
        out_f, in_f = qt.shape
        g = qt.group_size if qt.granularity == "group" else in_f
        results[name] = GPTQResult(
            qweight_float=dequantize(qt), codes=qt.q, scales=qt.scale.reshape(out_f, -1),
            zeros=qt.zero.reshape(out_f, -1), g_idx=(torch.arange(in_f) // g).to(torch.int32), perm=None,
            loss=0.0, damp=0.0, bits=qt.bits, group_size=report.group_size, symmetric=qt.symmetric)
    return GPTQReport(model=report.model, bits=report.bits, group_size=report.group_size, symmetric=report.symmetric,
                      act_order=False, static_groups=False, true_sequential=False, percdamp=0.0, n_samples=0,
                      seq_len=0, results=results)


QUANT_PARTS = ("qweight", "qzeros", "scales", "g_idx")


def bytes_by_part(checkpoint_dir: str | Path) -> dict[str, int]:
    """Bytes of a quantized checkpoint's *.safetensors by part: each quantized-layer tensor kind (qweight,
    qzeros, scales, g_idx), "float tensors" (everything else: embeddings, norms, lm_head) and "header"
    (safetensors' JSON index). The parts add up to the files' size."""
    from safetensors import safe_open

    files = sorted(Path(checkpoint_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"No *.safetensors in {checkpoint_dir}; write a checkpoint there first.")
    parts = dict.fromkeys(("float tensors", *QUANT_PARTS, "header"), 0)
    for file in files:
        in_tensors = 0
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                kind = key.rsplit(".", 1)[-1]
                parts[kind if kind in QUANT_PARTS else "float tensors"] += t.numel() * t.element_size()
                in_tensors += t.numel() * t.element_size()
        parts["header"] += file.stat().st_size - in_tensors  # 8-byte length + the JSON index
    return parts


def load_awq_checkpoint(path: str | Path, *, dtype: torch.dtype = torch.float16, device_map: str = "cpu"):
    """Load an AWQ checkpoint with transformers (gptqmodel provides the AWQ layers), in eval mode."""
    from ..gptq.tools import load_quantized

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise ValueError(f"No config.json in {path}; write the checkpoint with save_awq_checkpoint first.")
    if json.loads(config_file.read_text()).get("quantization_config", {}).get("quant_method") != "awq":
        raise ValueError(f"{path} has no AWQ quantization_config in config.json; write it with save_awq_checkpoint.")
    return load_quantized(path, device=device_map, dtype=dtype)
