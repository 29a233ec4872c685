#!/usr/bin/env bash
# Cold and warm starts through the build cache, per model: a cold build (empty build cache and
# Inductor folder), two warm starts (the entry and Inductor's own caches), and a start from the
# entry alone (Inductor's and Triton's folders emptied, as after a reboot). Then a table.
#
#   OUT=results/starts MODELS="meta-llama/Llama-3.2-1B-Instruct" ./benchmarks/start_times.sh
#
# Each run is `run_llm.py --benchmark` with ARGS; its JSON has the seconds from process start
# until the generator was ready (timings_s.ready_s) besides the usual figures.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a results folder}
MODELS=${MODELS:-meta-llama/Llama-3.2-1B-Instruct}
ARGS=${ARGS:---random_weights --backend inductor --cudagraph --precision BF16 --benchmark --isl 128 --num_tokens 128}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
export TLLM_BUILD_CACHE=$SCRATCH/builds
one() {  # name, then run_llm.py flags
  local name=$1; shift
  local start
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$PYTHON" run_llm.py "$@" $ARGS --output_json "$OUT/$name.json" > "$OUT/$name.out" 2> "$OUT/$name.log"
  echo "$name $start $(date +%s.%N) $?" >> "$OUT/times.txt"
  sleep 1
}
for model in $MODELS; do
  name=$(basename "$model")
  export TORCHINDUCTOR_CACHE_DIR=$SCRATCH/inductor-$name TRITON_CACHE_DIR=$SCRATCH/triton-$name
  one "cold_$name" --model "$model"
  one "warm_$name" --model "$model"
  one "warm2_$name" --model "$model"
  export TORCHINDUCTOR_CACHE_DIR=$SCRATCH/inductor2-$name TRITON_CACHE_DIR=$SCRATCH/triton2-$name
  one "entry_$name" --model "$model"
done
"$PYTHON" benchmarks/start_times.py "$OUT" | tee "$OUT/summary.txt"
