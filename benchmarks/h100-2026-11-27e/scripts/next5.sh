#!/bin/bash
# Qwen2.5-0.5B decode spread: four cold compiles of main, each profiled.
source devrun/lib.sh
rm -rf $R; mkdir -p $R; setup
W=$PWD; Q5="--model Qwen/Qwen2.5-0.5B-Instruct --isl 128 --iterations 5"
for l in 0 1 2 3; do (lane_env $l; export TORCHINDUCTOR_CACHE_DIR=/tmp/n5ind$l TRITON_CACHE_DIR=/tmp/n5tri$l
  cell $l q05_$l 170 $W run_llm.py $Q5 --profile /tmp/q05_$l.json
  python3 devrun/trace_summary.py /tmp/q05_$l.json 127 > $R/q05_${l}_kernels.txt 2>&1) & done
wait
tar czf $OUT/r.tgz -C /tmp r
for l in 0 1 2 3; do grep -E '^pipeline' $R/q05_$l.log | tr -s ' ' | cut -c1-60; head -4 $R/q05_${l}_kernels.txt | cut -c1-110; done
