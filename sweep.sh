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
# TP=N runs each cell under torchrun on N ranks (--tp N), one GPU each.
# Ctrl-C (SIGINT) or SIGTERM stops the running cells at once and records them as interrupted.
# Exit status: 0 when every cell ran, 1 when some failed (the last line says how many), 2 for
# an output folder that cannot be written, 130 when interrupted.
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
TP=${TP:-}  # N: each cell sharded over N ranks, one GPU each (torchrun, --tp N); GPUS stays empty
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
if [[ -n "$TP" && -n "$GPUS" ]]; then
  echo "error: TP=$TP runs each cell on $TP GPUs, GPUS one cell per GPU: set one of them" >&2
  exit 2
fi
if ! mkdir -p "$OUT/cells" "$OUT/logs" 2> /dev/null || ! touch "$OUT/.probe.$$" 2> /dev/null; then
  echo "error: OUT=$OUT: cannot write there" >&2
  exit 2
fi
rm -f "$OUT/.probe.$$"

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
  local launcher=("$PYTHON")
  if [[ -n "$TP" ]]; then
    launcher=("$PYTHON" -m torch.distributed.run --nproc_per_node "$TP" --master_port $((29500 + index % 1000)))
    cell_args+=(--tp "$TP")
    name+="_tp$TP"
  fi
  echo "[sweep] $((index + 1))/${#cells[@]}: $name${GPU:+ (GPU $GPU)}" >&2
  # In the background, so that the lane's trap runs (and stops it) the moment a stop arrives.
  "$@" timeout "$CELL_TIMEOUT" "${launcher[@]}" run_llm.py "${cell_args[@]}" --output_json "$OUT/cells/$name.json" \
    --results_csv "$OUT/results.csv" > "$OUT/logs/$name.out" 2> "$OUT/logs/$name.log" &
  cell=$!
  wait "$cell"
  local status=$? again
  if (( stopping )); then  # the trap cut the wait short: wait for the stopped cell to end
    wait "$cell" 2> /dev/null
    again=$?
    (( again != 127 )) && status=$again
  fi
  cell=
  if [[ $status == 0 ]]; then
    "$PYTHON" sweep_report.py --append "$OUT/results.jsonl" --cell="$OUT/cells/$name.json"
    return 0
  fi
  local error measured
  measured=$(tr '\r' '\n' < "$OUT/logs/$name.log" | grep -oE '\[tllm\] [a-z_]+: TTFT.*' | cut -c8- | paste -sd ';')
  if [[ $status == 124 ]]; then
    error="timed out after ${CELL_TIMEOUT} s${measured:+ (measured: $measured)}"
  elif (( stopping )); then
    error="interrupted${measured:+ (measured: $measured)}"
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
  # The sweep's own trap stops its lanes with SIGTERM; a lane passes it to its running cell
  # (timeout hands it on to run_llm.py), records the cell as interrupted and runs no more. A
  # lane and its children ignore SIGINT, which reaches them too (one process group) and would
  # otherwise kill the lane before it records anything.
  stopping=0 cell=
  trap '' INT
  trap 'stopping=1; [[ -n $cell ]] && kill -TERM "$cell" 2> /dev/null' TERM
  if [[ -n $GPU ]]; then
    prefix=(env CUDA_VISIBLE_DEVICES="$GPU")
    local share=$(($(nproc) / count))
    if command -v taskset > /dev/null && (( share > 0 )); then
      prefix+=(taskset -c "$((number * share))-$((number * share + share - 1))")
    fi
  fi
  for ((i = number; i < ${#cells[@]}; i += count)); do
    (( stopping )) && break
    run_cell "$i" "${prefix[@]}" || failed=$((failed + 1))
  done
  echo "$failed" > "$OUT/.failed.$$.$number"
}

interrupted=0
lanes=()
stop_lanes() {
  interrupted=1
  echo "[sweep] interrupted: stopping the running cells" >&2
  kill -TERM "${lanes[@]}" 2> /dev/null
}
trap stop_lanes INT TERM
gpus=($GPUS)
(( ${#gpus[@]} )) || gpus=("")
for number in "${!gpus[@]}"; do
  lane "$number" "${#gpus[@]}" "${gpus[$number]}" &
  lanes+=($!)
done
for pid in "${lanes[@]}"; do
  while kill -0 "$pid" 2> /dev/null; do wait "$pid"; done  # a trap ends a wait early: wait again
done
trap - INT TERM
failed=0
for count in "$OUT"/.failed.$$.*; do failed=$((failed + $(cat "$count"))); rm -f "$count"; done
"$PYTHON" sweep_report.py --report "$OUT"
if (( interrupted )); then
  echo "[sweep] interrupted; ${#cells[@]} cells, $failed failed or stopped; see $OUT/results.md" >&2
  exit 130
fi
echo "[sweep] ${#cells[@]} cells, $failed failed; see $OUT/results.md and $OUT/tpot.png" >&2
(( failed == 0 )) || exit 1
