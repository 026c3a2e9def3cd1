"""Recorded evidence for ``awq_tools``: AutoAWQ (seed 001 §1.3 script 2), the tools' CPU quirks,
and two claims of seed 004 (AWQ and MoE models; GPTQ and GPU generations).

Checked by hand on CHECKED_ON (or the row's own "checked" date) on the course's CPU machine (Python 3.11,
torch 2.13.0+cpu, 2 cores). AutoAWQ was installed in a throwaway virtual environment, never in the course's
own. The rows are data: nothing here touches the network. Each row's ``command`` reproduces its finding;
``short`` is the finding in one line, for the notebook's table.
"""

CHECKED_ON = "2026-11-22"
AUTOAWQ_SOURCE = "casper-hansen/AutoAWQ at tag v0.2.9 (commit 88e4c76, 2025-05-11, its last release)"

_VENV = ("python3.11 -m venv /tmp/aawq && /tmp/aawq/bin/pip install torch==2.13.0 --index-url "
         "https://download.pytorch.org/whl/cpu && /tmp/aawq/bin/pip install transformers==5.17.0 autoawq==0.2.9")
_SITE = ".venv/lib/python3.11/site-packages"

AUTOAWQ_STATUS = [
    dict(
        topic="release",
        short="last release 0.2.9 (2025-05-11), a source archive; last wheel 0.2.7.post3",
        finding="PyPI's newest autoawq is 0.2.9, uploaded 2025-05-11 as a source archive only (0.2.8, 2025-01-20, "
                "too); the last wheel is 0.2.7.post3 (2024-12-06). Its kernels package autoawq-kernels stopped at "
                "0.0.9 (2024-11-16).",
        command="pip index versions autoawq; curl -s https://pypi.org/pypi/autoawq/json  # releases[v][0].upload_time",
    ),
    dict(
        topic="maintenance",
        short="officially deprecated; handed over to vLLM's llm-compressor",
        finding="The PyPI description reads: 'AutoAWQ is officially deprecated and will no longer be maintained. "
                "The last tested configuration used Torch 2.6.0 and Transformers 4.51.3.' and 'AutoAWQ has been "
                "adopted by the vLLM Project: https://github.com/vllm-project/llm-compressor'. The package prints "
                "the same notice as a DeprecationWarning when imported.",
        command="curl -s https://pypi.org/pypi/autoawq/json | python -c \"import json,sys; "
                "print(json.load(sys.stdin)['info']['description'][:1500])\"",
    ),
    dict(
        topic="install",
        short="installs beside torch 2.13 and transformers 5.17 (pure Python, pulls triton)",
        finding="pip resolves autoawq==0.2.9 against torch 2.13.0+cpu and transformers 5.17.0 without changing "
                "either: it builds a pure-Python wheel from the archive (no compiled kernels) and pulls triton "
                "3.9.0 (285.8 MB, unused on a CPU), datasets, accelerate and zstandard.",
        command=_VENV,
    ),
    dict(
        topic="import",
        short="imports, with a DeprecationWarning",
        finding="'from awq import AutoAWQForCausalLM' works under transformers 5.17 (with the deprecation notice).",
        command="/tmp/aawq/bin/python -c 'from awq import AutoAWQForCausalLM'",
    ),
    dict(
        topic="calib_data='pileval'",
        short="needs the Hugging Face hub: fails offline",
        finding="The seed's script 2 as written needs the hub: ConnectionError: Couldn't reach "
                "'mit-han-lab/pile-val-backup' on the Hub (OfflineModeIsEnabled). The course runs offline.",
        command="HF_HUB_OFFLINE=1 /tmp/aawq/bin/python seed001_script2.py  # model_path = data/course-model",
    ),
    dict(
        topic="calib_data as a list of strings",
        short="works offline with short paragraphs: FAST perplexity 45.07 (149 s on CPU)",
        finding="Texts longer than 512 tokens are silently dropped (max_calib_seq_len); passing the calibration "
                "split as one document fails with ValueError: torch.cat(): expected a non-empty list of Tensors. "
                "With its 164 paragraphs (over 200 characters each) instead, the script quantizes the course model on the CPU (149 s, "
                "2 threads, bfloat16) and saves an AWQ GEMM checkpoint (qweight/qzeros int32, scales float16) "
                "that transformers 5.17 + gptqmodel reload: FAST perplexity 45.07 (float model 44.29).",
        command="/tmp/aawq/bin/python seed001_script2.py  # calib_data=[paragraphs of the calibration split]",
    ),
    dict(
        topic="inference on CPU",
        short="its own loader needs IPEX, which refuses torch 2.13; gptqmodel loads the output",
        finding="AutoAWQ's own loader can't run its checkpoint here: from_quantized(..., device_map='cpu') raises "
                "ImportError: Please install intel_extension_for_pytorch with `pip install "
                "intel_extension_for_pytorch` for 'ipex' kernel!; the newest IPEX (2.8.0) refuses to import: "
                "'ERROR! Intel® Extension for PyTorch* needs to work with PyTorch 2.8.*, but PyTorch 2.13.0+cpu "
                "is found.'",
        command="/tmp/aawq/bin/python -c \"from awq import AutoAWQForCausalLM; "
                "AutoAWQForCausalLM.from_quantized('/tmp/autoawq_out', device_map='cpu')\"",
    ),
    dict(
        topic="seed 003's quant_config",
        short="{'bits': 4, 'group_size': 128} raises TypeError: AutoAWQ's keys are w_bit and q_group_size",
        finding="Seed 003 (6.2.6) calls model.quantize(tokenizer, quant_config={'bits': 4, 'group_size': 128}, "
                "calib_data='wikitext'). The first line of AutoAWQ 0.2.9's quantize() is self.quant_config = "
                "AwqConfig.from_dict(quant_config) (awq/models/base.py), and from_dict builds AwqConfig(**quant_config) "
                "(awq/models/_config.py), a dataclass whose fields are quant_method, zero_point, q_group_size, w_bit, "
                "version and modules_to_not_convert: TypeError: AwqConfig.__init__() got an unexpected keyword "
                "argument 'bits', before any calibration text is read. Seed 001's {'zero_point': True, "
                "'q_group_size': 128, 'w_bit': 4, 'version': 'GEMM'} gives AwqConfig(w_bit=4, q_group_size=128, "
                "version='gemm').",
        command="git -C AutoAWQ show v0.2.9:awq/models/_config.py > /tmp/awq_config.py && python -c \"import "
                "importlib.util as u; s = u.spec_from_file_location('c', '/tmp/awq_config.py'); "
                "m = u.module_from_spec(s); s.loader.exec_module(m); m.AwqConfig.from_dict({'bits': 4, "
                "'group_size': 128})\"  # AutoAWQ: git clone https://github.com/casper-hansen/AutoAWQ",
        checked="2026-12-03",
    ),
    dict(
        topic="replacement",
        short="llm-compressor and GPTQModel do the job (section 6)",
        finding="llm-compressor's AWQModifier (the project AutoAWQ names as its successor) and GPTQModel's AWQ "
                "both quantize the course model in this environment and write checkpoints transformers 5.17 "
                "loads: see quantize_awq_with_llmcompressor and quantize_awq_with_gptqmodel.",
        command="python -c 'from course_lib import awq_tools'  # then run the two functions",
    ),
]

# What running the tools on this CPU machine showed (the reasons behind awq_tools' choices).
TOOL_NOTES = [
    dict(
        topic="llm-compressor AWQ without an accelerator",
        finding="oneshot with AWQModifier stops in AWQModifier._apply_smoothing -> IntermediatesCache.pin_memory: "
                "RuntimeError: Cannot access accelerator device when none is available. Pinning only speeds up "
                "copies to an accelerator; awq_tools skips it while no accelerator is present.",
        command="python -c 'import torch; torch.zeros(2).pin_memory()'  # the call pin_memory makes; "
                "pytest tests/test_awq_tools.py -k pinning",
    ),
    dict(
        topic="GPTQModel AWQ in float32 on CPU",
        finding="GPTQModel 7.6's scale search keeps its 'master copy' of each weight as "
                "w.detach().to(torch.float32).cpu().contiguous(), which for a float32 CPU weight is the weight "
                "itself: the 20 grid candidates are applied on top of each other. FAST perplexity 48.25 instead "
                "of 44.68 with that line copying (16 x 128 calibration tokens); its AWQ packing kernels also "
                "accept only float16/bfloat16. awq_tools therefore calibrates GPTQModel's AWQ in bfloat16.",
        command=f"grep -n 'contiguous()' {_SITE}/gptqmodel/looper/awq_processor.py  # in _compute_best_scale",
    ),
    dict(
        topic="clipping",
        finding="GPTQModel's AWQ (like AutoAWQ and the paper) searches a clipping range per layer after the "
                "scales (q_proj/k_proj excluded); llm-compressor 0.14's AWQModifier has no clipping search.",
        command=f"grep -n '_search_best_clip' {_SITE}/gptqmodel/looper/awq_processor.py; "
                f"grep -ci clip {_SITE}/llmcompressor/modifiers/transform/awq/base.py  # 0",
    ),
    dict(
        topic="W8A8 activations at reload",
        finding="transformers 5.17 reloads the SmoothQuant W8A8 checkpoint on CPU with every targeted Linear "
                "wrapped by compressed-tensors: each forward rounds its input to int8 per token (scale = "
                "max|x| / 127.5, dynamic) and uses int8-grid weights; the matmul itself runs in float32.",
        command="python -m pytest tests/test_awq_tools.py -k smoothquant",
    ),
]

# Two claims of seed 004 (section on common quantization methods), checked against the installed tools.
SEED_CLAIMS = [
    dict(
        topic="'AWQ does not support MoE models' (seed 004)",
        short="false: AutoAWQ has had Mixtral since 0.1.8 (2023-12), later Qwen3-MoE and DeepSeek-V2/V3",
        finding="False, for the seeds' own tool and for its successors. AutoAWQ 0.2.9 registers MoE models in "
                "awq/models/auto.py (AWQ_CAUSAL_LM_MODEL_MAP: mixtral, qwen3_moe, deepseek_v2, deepseek_v3); "
                "awq/models/mixtral.py (added 2023-12-22, release 0.1.8) scales every expert's w1/w3 against "
                "post_attention_layernorm and each expert's w3 -> w2, and deepseek_v3.py adds the shared experts. "
                "llm-compressor 0.14 registers AWQ mappings for Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, "
                "Glm4MoeForCausalLM (router + every expert's gate/up balanced against post_attention_layernorm, each "
                "expert's up -> down), DeepseekV2/V3 and Llama4; Mixtral falls back to the default mappings, whose "
                "regexes match the experts; 3-D fused experts are linearized first. A tiny random Qwen3-MoE "
                "(2 layers, 4 experts) went through AWQModifier + W4A16_ASYM on this CPU: all 32 Linear layers, "
                "experts included, quantized. GPTQModel 7.6 defines MoE module trees (qwen3_moe, mixtral, "
                "deepseek_v3, ...), its AWQ scale search groups each expert's gate/up and down; it quantized the "
                "same tiny Qwen3-MoE (METHOD.AWQ, bfloat16): 32 qweight tensors, experts included.",
        command=f"git -C AutoAWQ show v0.2.9:awq/models/auto.py | grep -n 'mixtral\\|moe\\|deepseek'; "
                f"git -C AutoAWQ log --diff-filter=A --format='%h %ci' -- awq/models/mixtral.py; "
                f"grep -n 'Moe\\|Deepseek' {_SITE}/llmcompressor/modifiers/transform/awq/mappings.py; "
                f"grep -n -i 'moe' {_SITE}/gptqmodel/looper/awq_processor.py; the tiny model: "
                "Qwen3MoeForCausalLM(Qwen3MoeConfig(vocab_size=4096, hidden_size=128, moe_intermediate_size=128, "
                "num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=4, "
                "num_experts_per_tok=2)).save_pretrained(d), then oneshot(recipe=[AWQModifier(), "
                "QuantizationModifier(targets=['Linear'], scheme='W4A16_ASYM', ignore=['lm_head', 're:.*mlp.gate$'])])",
        checked="2026-12-03",
    ),
    dict(
        topic="'GPTQ only runs on NVIDIA 30-series or newer' (seed 004)",
        short="false: GPTQ runs on a CPU; the Marlin kernel needs CC 8.0 (7.5 for GPTQ in GPTQModel 7.6)",
        finding="False. GPTQ itself is an offline algorithm: GPTQModel and llm-compressor run it on this CPU "
                "(course_lib.gptq.tools). What needs a recent GPU is one family of fast kernels, Marlin: "
                "IST-DASLab/marlin's README (Requirements) asks for an NVIDIA GPU with compute capability >= 8.0 "
                "(Ampere or Ada; its kernel uses Ampere's cp.async copies), and earlier GPTQModel releases checked "
                "exactly that (utils/marlin.py, _validate_marlin_device_support: get_device_capability()[0] >= 8). "
                "GPTQModel 7.6, pinned here, runs its AWQ Marlin from 8.0 (_AWQ_MARLIN_MIN_CAPABILITY = (8, 0)) and "
                "has added a float16-only Turing path to its GPTQ Marlin: compute capability >= 7.5 "
                "(_MARLIN_MIN_CAPABILITY = (7, 5); its CUDA code emulates cp.async below sm_80 and builds empty "
                "kernels only below __CUDA_ARCH__ 750). Machete needs 9.0 (Hopper); GPTQModel sets no minimum for its "
                "ExLlamaV2 and Triton kernels (CUDA only), and its torch kernel runs on any device, "
                "torch_fused/torch_aten on CPU.",
        command=f"grep -rn 'MIN_CAPABILITY\\s*=\\|_REQUIRED_COMPUTE_CAPABILITY\\s*=\\|SUPPORTS_DEVICES = ' "
                f"{_SITE}/gptqmodel/nn_modules/qlinear/ {_SITE}/gptqmodel/utils/machete.py; "
                f"grep -n '__CUDA_ARCH__' {_SITE}/gptqmodel_ext/marlin/*.cu*; "
                "curl -s https://raw.githubusercontent.com/IST-DASLab/marlin/master/README.md | grep -A3 Requirements",
        checked="2026-12-03",
    ),
]
