#!/bin/bash
# Session 6, call 4 (x2, main): the VLM GPU tests; Eagle2-2B benchmark with HF generate.
# Results straight under $OUT, so a cut-off call still returns what finished.
source devrun/lib.sh
R=$OUT/r; mkdir -p $R; setup
W=$PWD
(lane_env 0; cd $W && taskset -c 0-15 timeout 215 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
   -k "qwen_vl or eagle2" > $R/gpu_tests_vlm.txt 2>&1; echo "[lane 0] GPU tests vlm rc $?" | tee -a $R/cells.txt) & P0=$!
(lane_env 1; cell 1 eagle2 215 $W run_vlm.py --model nvidia/Eagle2-2B --iterations 3 --enable_pytorch_run) & P1=$!
wait $P0 $P1
grep -hE "passed|failed" $R/gpu_tests_vlm.txt | tail -2
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^(pipeline|hf_)' $f | tr -s ' ' | cut -c1-70 | tr '\n' '|')"; done
