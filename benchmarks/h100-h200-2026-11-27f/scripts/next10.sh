#!/bin/bash
# Session 6, call 3 (x2, main): Qwen3-0.6B and Gemma 3 at ISL 2048 with HF static + compile.
source devrun/lib.sh
rm -rf $R; mkdir -p $R; setup
W=$PWD; Bc="--enable_pytorch_run --baseline hf_compile --iterations 3"
nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 500 > $R/clocks.csv 2>&1 & SMI=$!
(lane_env 0; cell 0 q3_2048_compile 250 $W run_llm.py --model Qwen/Qwen3-0.6B --isl 2048 $Bc) & P0=$!
(lane_env 1; cell 1 g3_2048_compile 300 $W run_llm.py --model google/gemma-3-1b-it --isl 2048 $Bc) & P1=$!
wait $P0 $P1  # not a bare wait: nvidia-smi runs until killed
kill $SMI
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^(pipeline|hf_)' $f | tr -s ' ' | cut -c1-70 | tr '\n' '|')"; done
