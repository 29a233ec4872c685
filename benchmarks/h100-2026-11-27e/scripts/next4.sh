#!/bin/bash
# Llama-8B with/without gated_down; Qwen2.5 twice cold (spread); Qwen3 at 2048. Fresh cache dirs.
source devrun/lib.sh
rm -rf $R; mkdir -p $R; setup
W=$PWD; AB=benchmarks/inductor_ab.py
L8="--model meta-llama/Llama-3.1-8B-Instruct --isl 128 --iterations 5"; Q5="--model Qwen/Qwen2.5-0.5B-Instruct --isl 128 --iterations 5"
fresh() { lane_env $1; export TORCHINDUCTOR_CACHE_DIR=/tmp/n4ind$1$2 TRITON_CACHE_DIR=/tmp/n4tri$1$2; }
(fresh 0; cell 0 l8b_gd 300 $W run_llm.py $L8) &
(fresh 1; cell 1 l8b_nogd 300 $W $AB --without gated_down -- $L8) &
(fresh 2 a; cell 2 q05_a 150 $W run_llm.py $Q5; fresh 2 b; cell 2 q05_b 150 $W run_llm.py $Q5) &
(fresh 3; cell 3 q3_2048 300 $W run_llm.py --model Qwen/Qwen3-0.6B --isl 2048 --iterations 3) &
wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^(pipeline|hf_)' $f | tr -s ' ' | cut -c1-80 | tr '\n' '|') $(grep -oE 'export [0-9.]+ s, compile [0-9.]+ s' $f)"; done
