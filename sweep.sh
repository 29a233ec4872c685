#!/usr/bin/env bash
# Benchmark a grid of models x backends x caches x precisions x prompt lengths with run_llm.py.
#
#   OUT=results/h100 MODELS="meta-llama/Llama-3.2-1B-Instruct gpt2" ISLS="128 2048" ./sweep.sh
#
# Each cell appends a line to $OUT/results.jsonl (its JSON, or its error) and rows to
# $OUT/results.csv; a failed cell is recorded and the sweep goes on. Nothing is truncated, so
# earlier results stay. At the end $OUT/results.md (a table) and $OUT/tpot.png (a plot) are
# rebuilt from all results so far. Extra run_llm.py flags go in ARGS. CELL_TIMEOUT=SECONDS stops
# a cell that runs longer (a slow baseline compile, say) and records it as failed, with what it
# had measured by then. GPUS="0 1 2 3" runs one cell per listed GPU at a time (each cell sees
# only its GPU, and gets an equal share of the CPU cores where taskset exists), in grid order.
set -uo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-results/sweep}
MODELS=${MODELS:-"meta-llama/Llama-3.2-1B-Instruct Qwen/Qwen2.5-0.5B-Instruct"}
BACKENDS=${BACKENDS:-auto}
CACHES=${CACHES:-static_v2}
PRECISIONS=${PRECISIONS:-BF16}
ISLS=${ISLS:-"128 2048"}
NUM_TOKENS=${NUM_TOKENS:-128}
ARGS=${ARGS:-"--random_weights --cudagraph --iterations 5"}
CELL_TIMEOUT=${CELL_TIMEOUT:-0}  # 0: no limit
GPUS=${GPUS:-}  # empty: one cell at a time, on whatever devices the environment shows
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
mkdir -p "$OUT/cells" "$OUT/logs"

cells=()
for model in $MODELS; do for backend in $BACKENDS; do for cache in $CACHES; do
for precision in $PRECISIONS; do for isl in $ISLS; do
  cells+=("$model|$backend|$cache|$precision|$isl")
done; done; done; done; done

run_cell() {  # index, then the lane's command prefix (its GPU and cores)
  local index=$1; shift
  IFS='|' read -r model backend cache precision isl <<< "${cells[$index]}"
  local name
  name=$(echo "${model}_${backend}_${cache:-none}_${precision}_${isl}" | tr '/' '-' | sed 's/^-*//')
  local cell_args=(--model "$model" --backend "$backend" --cache "$cache" --precision "$precision" --isl "$isl"
                   --num_tokens "$NUM_TOKENS" --benchmark $ARGS)
  [[ " $ARGS " == *" --cudagraph "* && "$cache" != static_v2 ]] && cell_args=("${cell_args[@]/--cudagraph}")
  echo "[sweep] $((index + 1))/${#cells[@]}: $name${GPU:+ (GPU $GPU)}" >&2
  "$@" timeout "$CELL_TIMEOUT" "$PYTHON" run_llm.py "${cell_args[@]}" --output_json "$OUT/cells/$name.json" \
    --results_csv "$OUT/results.csv" > "$OUT/logs/$name.out" 2> "$OUT/logs/$name.log"
  local status=$?
  if [[ $status == 0 ]]; then
    "$PYTHON" sweep_report.py --append "$OUT/results.jsonl" --cell="$OUT/cells/$name.json"
    return 0
  fi
  local error
  if [[ $status == 124 ]]; then
    local measured
    measured=$(tr '\r' '\n' < "$OUT/logs/$name.log" | grep -oE '\[tllm\] [a-z_]+: TTFT.*' | cut -c8- | paste -sd ';')
    error="timed out after ${CELL_TIMEOUT} s${measured:+ (measured: $measured)}"
  else
    error=$(grep -m1 '^error:' "$OUT/logs/$name.log" || tail -n1 "$OUT/logs/$name.log")
  fi
  echo "[sweep] failed: $name: $error" >&2
  "$PYTHON" sweep_report.py --append "$OUT/results.jsonl" --failed="$name" --error="$error" \
    --cell-args="${cell_args[*]}"
  return 1
}

lane() {  # lane number, lane count, GPU (empty: none pinned): every count-th cell from the lane's number
  local number=$1 count=$2 failed=0 prefix=()
  GPU=$3
  if [[ -n $GPU ]]; then
    prefix=(env CUDA_VISIBLE_DEVICES="$GPU")
    local share=$(($(nproc) / count))
    if command -v taskset > /dev/null && (( share > 0 )); then
      prefix+=(taskset -c "$((number * share))-$((number * share + share - 1))")
    fi
  fi
  for ((i = number; i < ${#cells[@]}; i += count)); do
    run_cell "$i" "${prefix[@]}" || failed=$((failed + 1))
  done
  echo "$failed" > "$OUT/.failed.$$.$number"
}

gpus=($GPUS)
if (( ${#gpus[@]} )); then
  for number in "${!gpus[@]}"; do lane "$number" "${#gpus[@]}" "${gpus[$number]}" & done
  wait
else
  lane 0 1 ""
fi
failed=0
for count in "$OUT"/.failed.$$.*; do failed=$((failed + $(cat "$count"))); rm -f "$count"; done
"$PYTHON" sweep_report.py --report "$OUT"
echo "[sweep] ${#cells[@]} cells, $failed failed; see $OUT/results.md and $OUT/tpot.png" >&2
