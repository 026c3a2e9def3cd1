"""Recorded evidence on AutoGPTQ (seed 001 §1.3 script 1, seed 003 §6.2.6), for ``gptq_tools``.

Checked by hand on CHECKED_ON on the course's CPU machine (Python 3.11, torch 2.13.0+cpu), in a
throwaway virtual environment, never in the course's own. The rows are data: nothing here touches
the network. Each row's ``command`` reproduces its finding.
"""

CHECKED_ON = "2026-11-21"

_VENV = ("python -m venv /tmp/agq && /tmp/agq/bin/pip install torch==2.13.0 transformers==5.17.0 accelerate "
         "datasets peft sentencepiece rouge gekko && /tmp/agq/bin/pip install --no-deps /tmp/agq_dl/auto_gptq-0.7.1-*.whl")

AUTOGPTQ_STATUS = [
    dict(
        topic="release",
        finding="PyPI's newest auto-gptq is 0.7.1, uploaded 2024-03-01; no release since "
                "(gptqmodel had 65 releases, the latest 7.7.0 on 2026-10-24).",
        command="pip index versions auto-gptq; curl -s https://pypi.org/pypi/auto-gptq/json  # info.version, "
                "releases['0.7.1'][0].upload_time",
    ),
    dict(
        topic="maintenance",
        finding="The GitHub repository is archived; its README reads 'AutoGPTQ development has stopped. Please "
                "switch to GPTQModel as drop-in replacement.' (GitHub is not reachable from the course machine; "
                "quoted in intel/auto-round issue #428, 2025-02-06, and huggingface/peft PR #3190, 2026-04-23: "
                "'repo archived since March 2025').",
        command="open https://github.com/AutoGPTQ/AutoGPTQ",
    ),
    dict(
        topic="wheel",
        finding="The cp311 manylinux wheel (23.5 MB) ships only CUDA extensions (autogptq_cuda_64/256, "
                "exllama, exllamav2, marlin), linked against libcudart.so.12 and libc10_cuda.so.",
        command="pip download auto-gptq==0.7.1 --no-deps -d /tmp/agq_dl && unzip -l /tmp/agq_dl/auto_gptq-*.whl "
                "| grep '\\.so' && ldd autogptq_cuda_64*.so",
    ),
    dict(
        topic="import, transformers 5.17",
        finding="ImportError: cannot import name 'no_init_weights' from 'transformers.modeling_utils' "
                "(auto_gptq/modeling/_base.py line 20).",
        command=f"{_VENV} && /tmp/agq/bin/python -c 'import auto_gptq'",
    ),
    dict(
        topic="transformers 5.17 itself",
        finding="No AutoGPTQ code path is left: no file in transformers mentions auto_gptq, and its GPTQ "
                "quantizer requires gptqmodel ('Loading a GPTQ quantized model requires gptqmodel').",
        command="grep -rl auto_gptq $(python -c 'import transformers,os;print(os.path.dirname(transformers.__file__))') "
                "| wc -l  # 0",
    ),
    dict(
        topic="import, transformers 4.57.6",
        finding="Importing needs three downgrades: transformers<5, then datasets<4.4 (ImportError: cannot import "
                "name 'BucketNotFoundError' from 'huggingface_hub.errors'), then peft<0.14 (ImportError: cannot "
                "import name 'PEFT_TYPE_TO_MODEL_MAPPING' from 'peft.peft_model'); it then imports and prints "
                "'CUDA extension not installed.'",
        command="/tmp/agq/bin/pip install 'transformers<5' 'datasets<4.4' 'peft<0.14' && "
                "/tmp/agq/bin/python -c 'import auto_gptq'",
    ),
    dict(
        topic="quantize on CPU",
        finding="The seed's script 1 on the course model stops in from_pretrained: OSError: Load pretrained "
                "model to do quantization requires CUDA available. (a hard check, auto_gptq/modeling/_base.py "
                "line 715).",
        command="/tmp/agq/bin/python seed001_script1.py  # model_id = data/course-model, device_map='auto'",
    ),
    dict(
        topic="replacement",
        finding="GPTQModel (named by AutoGPTQ's authors) and llm-compressor's GPTQModifier both quantize the "
                "course model on CPU, and transformers 5.17 loads both outputs: see quantize_with_gptqmodel "
                "and quantize_with_llmcompressor.",
        command="python -c 'from course_lib import gptq_tools'  # then run the two functions",
    ),
]
