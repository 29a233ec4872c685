#!/bin/bash
# Next session, call 1 (x2 or x4): branch exp/lean-replay (checked out at devrun/lean with
# `git worktree add devrun/lean exp/lean-replay`) against its own --without fed_back, same host,
# profiled; trace_summary's per-step idle/overlap split for each; GPU tests of the branch.
source devrun/lib.sh
rm -rf $R; R=$OUT/r; mkdir -p $R; setup
W=$PWD/devrun/lean; AB=benchmarks/inductor_ab.py; T=$PWD/devrun/timed.py
Q="--model Qwen/Qwen2.5-0.5B-Instruct --isl 128 --iterations 5"
L="--model meta-llama/Llama-3.2-1B-Instruct --isl 128 --iterations 5"
summary() { python3 devrun/trace_summary.py /tmp/$1.json 127 > $R/$1_kernels.txt 2>&1; gzip -c /tmp/$1.json > $R/$1.json.gz; }
(lane_env 0; cd $W && taskset -c 0-15 timeout 400 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
   -k "replayed_greedy or (static_v2 and BF16 and True and not static_v1)" > $R/gpu_tests.txt 2>&1
 echo "[lane 0] GPU tests rc $?" | tee -a $R/cells.txt) & P0=$!
(lane_env 1
 TIMED_SCRIPT=run_llm.py cell 1 q_fed 170 $W $T $Q --profile /tmp/q_fed.json; summary q_fed
 TIMED_SCRIPT=$AB cell 1 q_copies 170 $W $T --without fed_back -- $Q --profile /tmp/q_copies.json; summary q_copies) & P1=$!
PIDS="$P0 $P1"
if [ "$(nvidia-smi -L | wc -l)" -ge 4 ]; then
  (lane_env 2; TIMED_SCRIPT=run_llm.py cell 2 l_fed 170 $W $T $L --profile /tmp/l_fed.json; summary l_fed) & PIDS="$PIDS $!"
  (lane_env 3; TIMED_SCRIPT=$AB cell 3 l_copies 170 $W $T --without fed_back -- $L --profile /tmp/l_copies.json; summary l_copies) & PIDS="$PIDS $!"
fi
wait $PIDS  # never a bare wait
cat $R/cells.txt; grep -hE "passed|failed" $R/gpu_tests.txt | tail -2
for f in $R/*_kernels.txt; do echo "$f"; grep -A3 "^per step" $f; done
for f in $R/l_*.log; do echo $f; sed -n '/COMPILE TIMES/,$p' $f | head -40; done
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^pipeline' $f | tr -s ' ' | cut -c1-70)"; done
