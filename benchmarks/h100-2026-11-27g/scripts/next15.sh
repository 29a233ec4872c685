#!/bin/bash
# Call 4 (x4): our kernels launched with PDL in CUDA graphs (this tree) against --without
# kernel_pdl (as main before), each pair in one lane, the A/B baseline first (cold) and ours
# second (tuning cache warm: same Inductor kernel configs); Qwen without CUDA graphs (the
# triton_op path, host-bound) and Gemma 3; GPU tests.
source devrun/lib.sh
rm -rf $R; R=/tmp/r; mkdir -p $R; setup
AB=benchmarks/inductor_ab.py
Q="--model Qwen/Qwen2.5-0.5B-Instruct --isl 128 --iterations 5"
L="--model meta-llama/Llama-3.2-1B-Instruct --isl 128 --iterations 5"
G="--model google/gemma-3-1b-it --isl 128 --iterations 5"
summary() { python3 devrun/trace_summary.py /tmp/$1.json 127 > $R/$1_kernels.txt 2>&1; }
(lane_env 0; cell 0 q_nopdl 200 . $AB --without kernel_pdl -- $Q
 cell 0 q_pdl 120 . run_llm.py $Q --profile /tmp/q_pdl.json; summary q_pdl) & P0=$!
(lane_env 1; cell 1 l_nopdl 200 . $AB --without kernel_pdl -- $L
 cell 1 l_pdl 120 . run_llm.py $L --profile /tmp/l_pdl.json; summary l_pdl) & P1=$!
(lane_env 2; taskset -c 32-47 timeout 400 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
   -k "decode_kernel or replayed_greedy or (static_v2 and BF16)" > $R/gpu_tests.txt 2>&1
 echo "[lane 2] GPU tests rc $?" | tee -a $R/cells.txt) & P2=$!
PIDS="$P0 $P1 $P2"
if [ "$(nvidia-smi -L | wc -l)" -ge 4 ]; then
  (lane_env 3; B0=$B; B=${B/--cudagraph/}; cell 3 qn 180 . run_llm.py $Q
   B=$B0; cell 3 g_pdl 200 . run_llm.py $G) & PIDS="$PIDS $!"
fi
wait $PIDS  # never a bare wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt; grep -hE "passed|failed" $R/gpu_tests.txt | tail -3
for f in $R/*_kernels.txt; do echo "$f"; grep -A4 "^per step" $f; done
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^pipeline|^export' $f | tr -s ' ' | cut -c1-70 | tr '\n' ' ')"; done
