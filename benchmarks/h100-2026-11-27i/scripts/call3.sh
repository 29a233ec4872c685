#!/bin/bash
# Session 9, call 3 (x4, main at 6b70c1a): Gemma 3 1B at ISL 2048 and gpt2 at 896 with both
# baselines in the same process; TTFT at ISL 128 for Llama-3.2-1B by layer (lane 2) against the
# whole graph (lane 3, inductor_ab --without layer_split), three cold compiles each.
source devrun/lib.sh
rm -rf $R; R=/tmp/r; mkdir -p $R; setup
BOTH="--enable_pytorch_run --baseline hf_generate hf_compile"
L1="--model meta-llama/Llama-3.2-1B-Instruct --isl 128 --iterations 5"
(lane_env 0; cell 0 g3_2048 270 . run_llm.py --model google/gemma-3-1b-it --isl 2048 --iterations 3 $BOTH) & P0=$!
(lane_env 1; cell 1 gpt2_896 200 . run_llm.py --model gpt2 --isl 896 --iterations 3 $BOTH) & P1=$!
(lane_env 2; for i in 1 2 3; do export TORCHINDUCTOR_CACHE_DIR=/tmp/ind2_$i TRITON_CACHE_DIR=/tmp/tri2_$i
   cell 2 split_$i 115 . run_llm.py $L1; done) & P2=$!
(lane_env 3; for i in 1 2 3; do export TORCHINDUCTOR_CACHE_DIR=/tmp/ind3_$i TRITON_CACHE_DIR=/tmp/tri3_$i
   cell 3 whole_$i 135 . benchmarks/inductor_ab.py --without layer_split -- $L1; done) & P3=$!
wait $P0 $P1 $P2 $P3  # never a bare wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^(pipeline|hf_)' $f | tr -s ' ' | cut -c1-80 | tr '\n' '|') $(grep -oE 'export [0-9.]+ s, compile [0-9.]+ s' $f)"; done
