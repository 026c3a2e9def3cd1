# Chapter 10 on the GPU machine, in parts that each fit one 10-minute call. Run from the repository root:
#   bash tools/attention_gpu.sh sweep    the Hopper kernel's changes one by one, the early-scores switch, the
#                                        backward's block shapes at head_dim 64                       (~6 min)
#   bash tools/attention_gpu.sh record   the forward and forward+backward benchmarks, the training run  (~4 min)
#   bash tools/attention_gpu.sh tests    chapter 10's GPU tests, in three processes (compiling is CPU work) (~3 min)
# Outputs go to $OUT (default /tmp/out); copy the .json and .log files into data/results/.
set -u
export PYTHONPATH=$PWD COURSE_FLASH_TUNE=quick
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
case "${1:-}" in
  sweep)
    timeout 300 python3 tools/attention_hopper_sweep.py 2>&1 | tail -30
    timeout 200 python3 tools/attention_ahead_sweep.py 2>&1 | tail -10
    D=64 timeout 110 python3 tools/attention_backward_tune.py > "$OUT/h200_attention_backward_tune_d64.log" 2>&1 ;;
  record)
    timeout 150 python3 -m course_lib.bench attention --name h200_attention --tune quick > "$OUT/attention.log" 2>&1
    timeout 200 python3 -m course_lib.bench attention-train --name h200_attention_train > "$OUT/train.log" 2>&1
    cp data/results/h200_attention.json data/results/h200_attention_train.json "$OUT/"
    timeout 90 python3 tools/attention_training_run.py 2>&1 | grep -v Loading | tail -2 ;;
  tests)
    T="timeout 380 python3 -m pytest -p no:cacheprovider -o addopts= -m gpu tests/test_attention_gpu.py -q"
    $T -k "backward" > "$OUT/t_backward.log" 2>&1 &
    $T -k "hopper" > "$OUT/t_hopper.log" 2>&1 &
    $T -k "not backward and not hopper" > "$OUT/t_rest.log" 2>&1 &
    wait
    tail -qn1 "$OUT"/t_*.log | tee "$OUT/h200_attention_gpu_tests.log" ;;
  *) echo "usage: bash tools/attention_gpu.sh sweep|record|tests" >&2; exit 2 ;;
esac
