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
# had measured by then.
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
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
mkdir -p "$OUT/cells" "$OUT/logs"

total=0; failed=0
for model in $MODELS; do for backend in $BACKENDS; do for cache in $CACHES; do
for precision in $PRECISIONS; do for isl in $ISLS; do
  name=$(echo "${model}_${backend}_${cache:-none}_${precision}_${isl}" | tr '/' '-' | sed 's/^-*//')
  cell_args=(--model "$model" --backend "$backend" --cache "$cache" --precision "$precision" --isl "$isl"
             --num_tokens "$NUM_TOKENS" --benchmark $ARGS)
  [[ " $ARGS " == *" --cudagraph "* && "$cache" != static_v2 ]] && cell_args=("${cell_args[@]/--cudagraph}")
  total=$((total + 1))
  echo "[sweep] $total: $name" >&2
  timeout "$CELL_TIMEOUT" "$PYTHON" run_llm.py "${cell_args[@]}" --output_json "$OUT/cells/$name.json" \
    --results_csv "$OUT/results.csv" > "$OUT/logs/$name.out" 2> "$OUT/logs/$name.log"
  status=$?
  if [[ $status == 0 ]]; then
    "$PYTHON" sweep_report.py --append "$OUT/results.jsonl" --cell="$OUT/cells/$name.json"
  else
    failed=$((failed + 1))
    if [[ $status == 124 ]]; then
      measured=$(tr '\r' '\n' < "$OUT/logs/$name.log" | grep -oE '\[tllm\] [a-z_]+: TTFT.*' | cut -c8- | paste -sd ';')
      error="timed out after ${CELL_TIMEOUT} s${measured:+ (measured: $measured)}"
    else
      error=$(grep -m1 '^error:' "$OUT/logs/$name.log" || tail -n1 "$OUT/logs/$name.log")
    fi
    echo "[sweep] failed: $error" >&2
    "$PYTHON" sweep_report.py --append "$OUT/results.jsonl" --failed="$name" --error="$error" \
      --cell-args="${cell_args[*]}"
  fi
done; done; done; done; done
"$PYTHON" sweep_report.py --report "$OUT"
echo "[sweep] $total cells, $failed failed; see $OUT/results.md and $OUT/tpot.png" >&2
