# The course's commands. The two that matter (see README.md):
#   make lab    set everything up and open JupyterLab on notebooks/
#   make test   set everything up and run the unit tests plus strict nbval over every notebook
# Both are idempotent: a second run only re-checks what is installed.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.course-installed
KERNEL := llm-course
KERNEL_DISPLAY := Python 3 (LLM course)
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
JOBS ?= 2
# GPU wheelhouse: the target interpreter of the offline GPU machine.
WHEEL_PYTHON ?= 3.12
WHEELHOUSE ?= wheelhouse

.PHONY: help setup lab test unit outputs solved bench llama-cpp wheelhouse gpu-run constraints check-python clean

help:
	@echo "make lab         set up .venv and open JupyterLab on notebooks/"
	@echo "make test        set up .venv, run unit tests and strict nbval on every notebook"
	@echo "make unit        unit tests only (no notebooks)"
	@echo "make outputs     re-execute every notebook in the canonical environment (stores outputs)"
	@echo "make solved      copies of the notebooks with the exercise solutions filled in, run (solved/)"
	@echo "make bench       record GPU benchmarks into data/results/ (needs CUDA)"
	@echo "make llama-cpp   build llama-cpp-python from source into .venv (chapter 06; ~17 min on 2 cores)"
	@echo "make wheelhouse  wheels for an offline GPU machine (Python $(WHEEL_PYTHON), manylinux x86_64)"
	@echo "make gpu-run     on a GPU machine, from the wheelhouse: GPU tests + every notebook (lax)"
	@echo "make constraints re-pin constraints.txt from the current .venv"

check-python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: '$(PYTHON)' was not found. The course needs Python 3.11 or newer (3.11 is what the"; \
	  echo "       stored outputs were made with). Install it, then run e.g. 'make test PYTHON=python3.11'."; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || { \
	  echo "error: '$(PYTHON)' is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())')."; \
	  echo "       The course needs Python 3.11 or newer. Run e.g. 'make test PYTHON=python3.11',"; \
	  echo "       or create the conda environment from environment.yml."; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "error: '$(PYTHON)' has no venv/ensurepip module. On Debian/Ubuntu: apt-get install python3-venv."; exit 1; }

# The environment: rebuilt only when the dependency files change.
$(STAMP): pyproject.toml constraints.txt | check-python
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all]"
	$(PY) -m course_lib.lm.real_model install
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "$(KERNEL_DISPLAY)" >/dev/null
	@touch $@
	@echo "environment ready in $(VENV) (kernel '$(KERNEL_DISPLAY)')"

setup: $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks \
	  --MappingKernelManager.default_kernel_name=$(KERNEL) $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

test: $(STAMP)
	$(PY) -m course_lib.core.canonical run -- $(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m course_lib.core.canonical run -- $(PY) -m pytest tests $(PYTEST_ARGS)

outputs: $(STAMP)
	$(PY) -m course_lib.core.canonical execute -j $(JOBS) $(if $(NB),$(NB),$(NOTEBOOKS))

# Instructors: the notebooks with the reference solutions in place of the exercise stubs, executed, in solved/.
solved: $(STAMP)
	$(PY) -m course_lib.exercises.solved --execute $(if $(NB),$(NB),$(NOTEBOOKS))

bench: $(STAMP)
	$(PY) -m course_lib.bench roofline
	$(PY) -m course_lib.bench prefill-decode
	$(PY) -m course_lib.bench model-eval
	$(PY) -m course_lib.bench real-model
	$(PY) -m course_lib.bench bnb
	$(PY) -m course_lib.bench kv-decode
	$(PY) -m course_lib.bench attention --tune quick
	$(PY) -m course_lib.bench dequant-matmul
	$(PY) -m course_lib.bench sparse24
	$(PY) -m course_lib.bench distill
	$(PY) -m course_lib.bench serving

# Optional (chapter 06): llama.cpp through llama-cpp-python, a source-only package that pip compiles with CMake.
LLAMA_CPP_JOBS ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)
llama-cpp: $(STAMP)
	@echo "building llama-cpp-python 0.3.36 from source with $(LLAMA_CPP_JOBS) jobs: about 17 minutes on 2 cores"
	CMAKE_BUILD_PARALLEL_LEVEL=$(LLAMA_CPP_JOBS) $(PY) -m pip install --disable-pip-version-check \
	  -c constraints.txt llama-cpp-python==0.3.36
	$(PY) -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__, "is installed")'

constraints: $(STAMP)
	@{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/'; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt && echo "constraints.txt re-pinned; now run 'make outputs'"

wheelhouse: $(STAMP)
	$(PY) -m course_lib.core.wheelhouse build --python $(WHEEL_PYTHON) --out $(WHEELHOUSE) $(if $(filter 0,$(REAL_MODEL)),--no-real-model)

# Run on the GPU machine (no internet), from a checkout that carries the wheelhouse.
gpu-run:
	bash tools/gpu_run.sh $(if $(BENCH),--bench) $(if $(PART),--part $(PART)) $(WHEELHOUSE)

clean:
	rm -rf $(VENV) build *.egg-info course_lib.egg-info .pytest_cache
