#!/bin/bash
# Call 3 (x4): branch exp/pdl (custom kernels launched with PDL; this tree) against main
# (devrun/base), each pair in one lane, main first (cold), the branch second (Inductor's tuning
# cache warm, so the same kernel configs); Qwen and Llama with CUDA graphs, Qwen without; GPU tests.
source devrun/lib.sh
rm -rf $R; R=/tmp/r; mkdir -p $R; setup
BASE=$PWD/devrun/base
Q="--model Qwen/Qwen2.5-0.5B-Instruct --isl 128 --iterations 5"
L="--model meta-llama/Llama-3.2-1B-Instruct --isl 128 --iterations 5"
summary() { python3 devrun/trace_summary.py /tmp/$1.json 127 > $R/$1_kernels.txt 2>&1; gzip -c /tmp/$1.json > $R/$1.json.gz; }
(lane_env 0; cell 0 q_main 200 $BASE run_llm.py $Q --profile /tmp/q_main.json; summary q_main
 cell 0 q_pdl 150 . run_llm.py $Q --profile /tmp/q_pdl.json; summary q_pdl) & P0=$!
(lane_env 1; cell 1 l_main 200 $BASE run_llm.py $L --profile /tmp/l_main.json; summary l_main
 cell 1 l_pdl 150 . run_llm.py $L --profile /tmp/l_pdl.json; summary l_pdl) & P1=$!
(lane_env 2; taskset -c 32-47 timeout 420 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
   -k "decode_kernel or replayed_greedy or (static_v2 and BF16)" > $R/gpu_tests.txt 2>&1
 echo "[lane 2] GPU tests rc $?" | tee -a $R/cells.txt) & P2=$!
PIDS="$P0 $P1 $P2"
if [ "$(nvidia-smi -L | wc -l)" -ge 4 ]; then
  (lane_env 3; B=${B/--cudagraph/}
   cell 3 qn_main 200 $BASE run_llm.py $Q; cell 3 qn_pdl 150 . run_llm.py $Q) & PIDS="$PIDS $!"
fi
wait $PIDS  # never a bare wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt; grep -hE "passed|failed" $R/gpu_tests.txt | tail -3
for f in $R/*_kernels.txt; do echo "$f"; grep -A4 "^per step" $f; done
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^pipeline|^export' $f | tr -s ' ' | cut -c1-70 | tr '\n' ' ')"; done
