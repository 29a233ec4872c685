#!/bin/bash
# Session 8, call 3 (x2): lane 0 Llama-3.2-1B by layer (this tree: only with --cudagraph) cold
# again at ISL 128 (compile breakdown), then ISL 2048 (TTFT target 8 ms) and Qwen2.5-0.5B at
# ISL 2048; lane 1 the GPU tests that run the pieces (Inductor + CUDA graphs, every text family)
# and both VLMs (whose vision encoders stay whole).
source devrun/lib.sh
rm -rf $R; R=/tmp/r; mkdir -p $R; setup
T=$PWD/devrun/timed.py
L="--model meta-llama/Llama-3.2-1B-Instruct --iterations 5"
Q="--model Qwen/Qwen2.5-0.5B-Instruct --iterations 5"
(lane_env 0; export TIMED_SCRIPT=run_llm.py
 cell 0 l_split 200 . $T $L --isl 128
 cell 0 l2048 150 . run_llm.py $L --isl 2048
 cell 0 q2048 150 . run_llm.py $Q --isl 2048) & P0=$!
(lane_env 1; taskset -c 16-31 timeout 480 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
   -k "qwen_vl or eagle2 or (inductor and True)" > $R/gpu_tests.txt 2>&1
 echo "[lane 1] GPU tests rc $?" | tee -a $R/cells.txt) & P1=$!
wait $P0 $P1  # never a bare wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt; grep -hE "passed|failed|FAILED|Error" $R/gpu_tests.txt | tail -8
for f in $R/l_split.log; do echo "== $f"; grep -E "exported|compiled|layer pieces" $f; grep "^TUNING" $f; grep -E "^_compile.compile_inner|fw_compiler_base|async_compile.wait" $f; done
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^pipeline|^export' $f | tr -s ' ' | cut -c1-70 | tr '\n' ' ')"; done
