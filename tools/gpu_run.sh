#!/usr/bin/env bash
# Offline GPU run: install from the wheelhouse into a virtual environment and run, on CUDA, the unit
# tests (the gpu-marked ones included) and the notebooks under nbval-lax (outputs are not compared;
# an error in any cell still fails).
#   usage: bash tools/gpu_run.sh [--bench] [--part PART] [WHEELHOUSE]     (make gpu-run [PART=...] [BENCH=1])
#   PART   all (default) | unit | notebooks | NN (one notebook, e.g. 03) | NN,NN,... (several)
#          Each part takes under 10 minutes on an H200 (GPU time is often booked in short slots);
#          `all` is every unit test, then every notebook.
#   --bench first records the GPU benchmarks into data/results/ (what `make bench` does).
# The environment is kept in $COURSE_GPU_VENV (default .gpu-venv), so a second part on the same
# machine does not install again. Unit tests run on $COURSE_GPU_WORKERS xdist workers (default 4), notebooks on
# $COURSE_GPU_NB_WORKERS (default 4), all sharing the one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=0
PART=all
while [ $# -gt 0 ]; do
  case "$1" in
    --bench) BENCH=1; shift ;;
    --part) PART=${2:?--part needs a value: all, unit, notebooks or notebook numbers like 03,04}; shift 2 ;;
    *) break ;;
  esac
done
WHEELHOUSE=${1:-wheelhouse}
PYTHON=${PYTHON:-python3}
[ -d "$WHEELHOUSE" ] || { echo "error: no wheelhouse at '$WHEELHOUSE'. Build it where pip works: make wheelhouse"; exit 2; }
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || {
  echo "error: '$PYTHON' has no CUDA-enabled torch. Run this on the GPU machine, with the image's python."; exit 2; }

NOTEBOOKS=()
case "$PART" in
  all|unit|notebooks) ;;
  *) for n in ${PART//,/ }; do
       match=(notebooks/${n}_*.ipynb)
       [ -e "${match[0]}" ] || { echo "error: no notebook numbered '$n' (parts: all, unit, notebooks, or numbers like 03,04)"; exit 2; }
       NOTEBOOKS+=("${match[0]}")
     done ;;
esac

VENV=${COURSE_GPU_VENV:-.gpu-venv}
if [ ! -x "$VENV/bin/python" ] || [ "$WHEELHOUSE/requirements.txt" -nt "$VENV/.installed" ]; then
  "$PYTHON" -m venv "$VENV"
  # The image's python may itself be a venv, whose packages --system-site-packages would not see:
  # point the new venv at the image's site-packages explicitly (after its own, which take precedence).
  "$PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))' \
    > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_gpu_image.pth"
  # The lock is the whole pinned closure: install it without resolving (see course_lib/core/wheelhouse.py).
  "$VENV/bin/python" -m pip install --quiet --no-index --no-deps --find-links "$WHEELHOUSE" -r "$WHEELHOUSE/requirements.txt"
  "$VENV/bin/python" -m pip install --quiet --no-index --no-deps --no-build-isolation -e .
  # the real model's wheel, without its dependencies (course_lib.lm.real_model), when the wheelhouse has it
  if compgen -G "$WHEELHOUSE/no-deps/*.whl" >/dev/null; then
    "$VENV/bin/python" -m pip install --quiet --no-index --no-deps "$WHEELHOUSE"/no-deps/*.whl
  fi
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name llm-course --display-name "Python 3 (LLM course)" >/dev/null
  touch "$VENV/.installed"
fi
echo "== $VENV: $("$VENV/bin/python" -c 'import torch, course_lib; print("torch", torch.__version__, "on", torch.cuda.get_device_name(0), "| course_lib", course_lib.__version__)')"
if [ "$BENCH" = 1 ]; then
  echo "== recording GPU benchmarks into data/results/"
  while read -r bench; do "$VENV/bin/python" -m course_lib.bench $bench; done < <(sed -n 's/^\t\$(PY) -m course_lib.bench //p' Makefile)
fi
# Convert the real model once (or say why it is missing: its tests then skip, its notebooks cells fail clearly).
if ! "$VENV/bin/python" -m course_lib.lm.real_model prepare; then
  echo "== the real model is not installed here (wheelhouse built with REAL_MODEL=0?): its unit tests are skipped"
  export COURSE_NO_REAL_MODEL=1
fi
OPTS=(-o "addopts=-p no:cacheprovider -p course_lib.core.nbval_plugin" -p no:randomly)
START=$SECONDS
if [ "$PART" = all ] || [ "$PART" = unit ]; then
  echo "== unit tests on CUDA (${COURSE_GPU_WORKERS:-4} xdist workers sharing the GPU)"
  "$VENV/bin/python" -m pytest "${OPTS[@]}" -n "${COURSE_GPU_WORKERS:-4}" --dist loadfile -q -rs tests \
    --ignore tests/test_notebooks_without_libraries.py  # a CPU check of the stored notebooks, not of CUDA
fi
if [ "$PART" = all ] || [ "$PART" = notebooks ]; then
  NOTEBOOKS=(notebooks/*.ipynb)
fi
if [ ${#NOTEBOOKS[@]} -gt 0 ]; then
  NB_WORKERS=${COURSE_GPU_NB_WORKERS:-4}
  echo "== notebooks on CUDA, $NB_WORKERS at a time (nbval-lax: every cell must run without error): ${NOTEBOOKS[*]}"
  "$VENV/bin/python" -m pytest "${OPTS[@]}" -n "$NB_WORKERS" --dist loadfile -q --durations=5 --nbval-lax \
    --nbval-current-env --nbval-cell-timeout 900 "${NOTEBOOKS[@]}"
fi
echo "== part '$PART' passed in $((SECONDS - START)) s"
