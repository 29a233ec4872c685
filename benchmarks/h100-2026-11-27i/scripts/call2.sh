#!/bin/bash
# Session 9, call 2 (x4, main at 6b70c1a): Llama-3.2-1B, Qwen2.5-0.5B, Qwen3-0.6B by layer with
# both baselines in the same process at ISL 128 and 2048; Gemma 3 1B at 128 and gpt2 at 896;
# the three Gemma 3 static_v2 GPU tests that call 1's 525 s shard did not reach.
source devrun/lib.sh
rm -rf $R; R=/tmp/r; mkdir -p $R; setup
BOTH="--enable_pytorch_run --baseline hf_generate hf_compile"
L1="--model meta-llama/Llama-3.2-1B-Instruct"; Q5="--model Qwen/Qwen2.5-0.5B-Instruct"
Q3="--model Qwen/Qwen3-0.6B"; G3="--model google/gemma-3-1b-it"; G2="--model gpt2"
(lane_env 0; cell 0 l1b_128 260 . run_llm.py $L1 --isl 128 --iterations 5 $BOTH
 cell 0 l1b_2048 200 . run_llm.py $L1 --isl 2048 --iterations 3 $BOTH) & P0=$!
(lane_env 1; cell 1 q05_128 260 . run_llm.py $Q5 --isl 128 --iterations 5 $BOTH
 cell 1 q05_2048 200 . run_llm.py $Q5 --isl 2048 --iterations 3 $BOTH) & P1=$!
(lane_env 2; cell 2 q3_128 270 . run_llm.py $Q3 --isl 128 --iterations 5 $BOTH
 cell 2 q3_2048 240 . run_llm.py $Q3 --isl 2048 --iterations 3 $BOTH) & P2=$!
(lane_env 3; cell 3 g3_128 300 . run_llm.py $G3 --isl 128 --iterations 5 $BOTH
 taskset -c 48-63 timeout 220 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
   -k "low_precision and gemma3 and static_v2 and BF16 and (inductor or True)" > $R/gpu_tests_gemma3.txt 2>&1
 echo "[lane 3] GPU tests gemma3 rc $?" | tee -a $R/cells.txt) & P3=$!
wait $P0 $P1 $P2 $P3  # never a bare wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt; grep -hE "passed|failed|FAILED|max rel" $R/gpu_tests_*.txt | tail -8
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^(pipeline|hf_)' $f | tr -s ' ' | cut -c1-80 | tr '\n' '|') $(grep -oE 'export [0-9.]+ s, compile [0-9.]+ s' $f)"; done
