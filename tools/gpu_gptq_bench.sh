#!/usr/bin/env bash
# The GPTQ or AWQ timing (python -m course_lib.bench gptq-time / awq-time) on the offline GPU machine,
# with the two libraries it compares against. Run from the repository root, which carries wheelhouse/ (make wheelhouse)
# and wheelhouse/compress/, assembled where pip works:
#   * pure-Python or abi3 wheels for Python 3.12 of llmcompressor 0.14.0.1, compressed-tensors 0.19.0,
#     auto-round, loguru, optimum, pydantic(+core), torchao, typing-inspection, annotated-types, and
#     GPTQModel 7.6.0, Device-SMI, LogBar, TokeNicer, Defuser (sdists on PyPI: built with `pip wheel`);
#   * the PyPcre 0.6.4 sdist (GPTQModel needs it; it has a C extension), built here against Debian's
#     static libpcre2-8 (libpcre2-dev 10.42: pcre2.h and libpcre2-8.a under compress/pcre2/).
# GPTQModel 7.6 pins numpy==2.2.6; the GPU image has numpy 2.5.2, so GPTQModel goes in with --no-deps
# (pip check's complaints are printed). Results: data/results/<gpu>_<method>_time.json.
#   usage: bash tools/gpu_gptq_bench.sh [gptq-time|awq-time] [options, e.g. --repeats 3 --name h100_gptq_time]
# The virtual environment it builds (/tmp/cv) stays for later commands of the same session.
set -uo pipefail
BENCH=gptq-time
case "${1:-}" in gptq-time|awq-time) BENCH=$1; shift;; esac
W=wheelhouse; C=$PWD/wheelhouse/compress
PY=python3
echo "python: $($PY -V) include: $($PY -c 'import sysconfig;print(sysconfig.get_paths()["include"])')"
ls "$($PY -c 'import sysconfig;print(sysconfig.get_paths()["include"])')/Python.h"; which gcc cc pkg-config
$PY -m venv /tmp/cv
$PY -c 'import site; print("\n".join(site.getsitepackages()))' > "$(/tmp/cv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_gpu_image.pth"
/tmp/cv/bin/pip install -q --no-index --find-links $W --no-build-isolation -e ".[test,notebooks,eval]" || exit 3
mkdir -p /tmp/pw
PYPCRE_INCLUDE_DIR=$C/pcre2/include PYPCRE_LIBRARY_DIR=$C/pcre2/lib PYPCRE_FORCE_STATIC=1 \
  /tmp/cv/bin/pip wheel -q --no-deps --no-build-isolation --no-index -w /tmp/pw $C/pypcre-0.6.4.tar.gz 2>&1 | tail -5
ls /tmp/pw
/tmp/cv/bin/pip install -q --no-index --find-links $C --find-links $W llmcompressor==0.14.0.1 optimum==2.3.0 || exit 4
echo "== why pip refuses gptqmodel with its dependencies:"
/tmp/cv/bin/pip install --dry-run --no-index --find-links /tmp/pw --find-links $C --find-links $W gptqmodel==7.6.0 2>&1 | grep -iE "requires|conflict|because|no matching|could not find" | head -8
/tmp/cv/bin/python -c "import numpy, google.protobuf as p; print('image numpy', numpy.__version__, 'protobuf', p.__version__)"
TOOLS="course_lib course_lib-duo-noclip llmcompressor"
[ "$BENCH" = gptq-time ] && TOOLS="course_lib course_lib-one-pass llmcompressor"
if /tmp/cv/bin/pip install -q --no-deps --no-index --find-links /tmp/pw --find-links $C pypcre gptqmodel==7.6.0 device-smi tokenicer logbar defuser \
   && /tmp/cv/bin/python -c "import gptqmodel" >/dev/null 2>&1; then
  TOOLS="$TOOLS gptqmodel"
else
  echo "gptqmodel does not import"; /tmp/cv/bin/python -c "import gptqmodel" 2>&1 | tail -3
fi
/tmp/cv/bin/pip check 2>&1 | head -12
/tmp/cv/bin/python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
/tmp/cv/bin/python -m course_lib.bench $BENCH --device cuda --tools $TOOLS "$@"
