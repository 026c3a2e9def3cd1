#!/usr/bin/env bash
# Offline GPU run: install from the wheelhouse into a throw-away venv and run, on CUDA,
# every unit test (the gpu-marked ones included) and every notebook under nbval-lax
# (outputs are not compared; an error in any cell still fails).
#   usage: bash tools/gpu_run.sh [--bench] [WHEELHOUSE]      (make gpu-run, make gpu-run BENCH=1)
#   --bench first records the GPU benchmarks into data/results/ (what `make bench` does).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=0
if [ "${1:-}" = "--bench" ]; then BENCH=1; shift; fi
WHEELHOUSE=${1:-wheelhouse}
PYTHON=${PYTHON:-python3}
[ -d "$WHEELHOUSE" ] || { echo "error: no wheelhouse at '$WHEELHOUSE'. Build it where pip works: make wheelhouse"; exit 2; }
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || {
  echo "error: '$PYTHON' has no CUDA-enabled torch. Run this on the GPU machine, with the image's python."; exit 2; }
VENV=${COURSE_GPU_VENV:-$(mktemp -d)/venv}
"$PYTHON" -m venv "$VENV"
# The image's python may itself be a venv, whose packages --system-site-packages would not see:
# point the new venv at the image's site-packages explicitly (after its own, which take precedence).
"$PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))' \
  > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_gpu_image.pth"
"$VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" --no-build-isolation -e ".[test,notebooks,eval]"
"$VENV/bin/python" -m ipykernel install --sys-prefix --name llm-course --display-name "Python 3 (LLM course)" >/dev/null
echo "== installed into $VENV: $("$VENV/bin/python" -c 'import torch, course_lib; print("torch", torch.__version__, "on", torch.cuda.get_device_name(0), "| course_lib", course_lib.__version__)')"
if [ "$BENCH" = 1 ]; then
  echo "== recording GPU benchmarks into data/results/"
  "$VENV/bin/python" -m course_lib.bench roofline
  "$VENV/bin/python" -m course_lib.bench prefill-decode
  "$VENV/bin/python" -m course_lib.bench model-eval
  "$VENV/bin/python" -m course_lib.bench kv-decode
  "$VENV/bin/python" -m course_lib.bench kv-decode --model llama-1b-shape
  "$VENV/bin/python" -m course_lib.bench attention
  "$VENV/bin/python" -m course_lib.bench sparse24
  "$VENV/bin/python" -m course_lib.bench distill
fi
OPTS=(-o "addopts=-p no:cacheprovider -p course_lib.nbval_plugin" -p no:randomly)
echo "== unit tests on CUDA (${COURSE_GPU_WORKERS:-4} xdist workers sharing the GPU)"
"$VENV/bin/python" -m pytest "${OPTS[@]}" -n "${COURSE_GPU_WORKERS:-4}" --dist loadfile -q -rs tests
echo "== notebooks on CUDA (nbval-lax: every cell must run without error)"
"$VENV/bin/python" -m pytest "${OPTS[@]}" -q --nbval-lax --nbval-current-env --nbval-cell-timeout 900 notebooks
