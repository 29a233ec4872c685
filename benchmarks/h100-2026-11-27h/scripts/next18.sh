#!/bin/bash
# Session 8, call 2 (x2): call 1's split half again after the fix (split_module of torch 2.11 has
# no tuple_return), lane 0, every cell cold except the no-CUDA-graph Qwen one; lane 1 the GPU
# tests of the Inductor path (every text family) and of both VLMs.
source devrun/lib.sh
rm -rf $R; R=/tmp/r; mkdir -p $R; setup
T=$PWD/devrun/timed.py
Q="--model Qwen/Qwen2.5-0.5B-Instruct --isl 128 --iterations 5"
L="--model meta-llama/Llama-3.2-1B-Instruct --isl 128 --iterations 5"
G="--model google/gemma-3-1b-it --isl 128 --iterations 5"
summary() { python3 devrun/trace_summary.py /tmp/$1.json 127 > $R/$1_kernels.txt 2>&1; }
(lane_env 0; export TIMED_SCRIPT=run_llm.py
 cell 0 l_split 200 . $T $L --profile /tmp/l_split.json; summary l_split
 cell 0 q_split 200 . $T $Q --profile /tmp/q_split.json; summary q_split
 (B=${B/--cudagraph/}; cell 0 qn_split 150 . run_llm.py $Q)
 cell 0 g_split 200 . $T $G) & P0=$!
(lane_env 1; taskset -c 16-31 timeout 560 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
   -k "inductor or replayed_greedy or qwen_vl or eagle2" > $R/gpu_tests.txt 2>&1
 echo "[lane 1] GPU tests rc $?" | tee -a $R/cells.txt) & P1=$!
wait $P0 $P1  # never a bare wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt; grep -hE "passed|failed|FAILED|Error" $R/gpu_tests.txt | tail -8
for f in $R/*_kernels.txt; do echo "$f"; grep -A3 "^per step" $f; done
for f in $R/?_*.log; do echo "== $f"; grep -E "exported|compiled|layer pieces" $f; grep "^TUNING" $f; grep -E "^_compile.compile_inner|fw_compiler_base|async_compile.wait" $f; done
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^pipeline|^export' $f | tr -s ' ' | cut -c1-70 | tr '\n' ' ')"; done
