#!/bin/bash
# Call 5 (same warm x4 machine, lane 3's caches warm): Qwen without CUDA graphs, main then this tree, alone.
source devrun/lib.sh
rm -rf $R; R=/tmp/r; mkdir -p $R
Q="--model Qwen/Qwen2.5-0.5B-Instruct --isl 128 --iterations 5"
lane_env 3; B=${B/--cudagraph/}
cell 3 qn_main 100 $PWD/devrun/base run_llm.py $Q; cell 3 qn_pdl 100 . run_llm.py $Q; cell 3 qn_main2 100 $PWD/devrun/base run_llm.py $Q
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^pipeline|^export' $f | tr -s ' ' | cut -c1-70 | tr '\n' ' ')"; done
