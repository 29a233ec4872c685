#!/bin/bash
# Session 9, call 1 (x4, main at 6b70c1a): the whole GPU test suite on four-layer tiny models
# (lanes 0-1), and Llama-3.1-8B by layer with both baselines in the same process at ISL 128 and
# 2048 (lanes 2-3; HF static + compile at 2048 never measured before), then gpt2 at 128.
source devrun/lib.sh
rm -rf $R; R=/tmp/r; mkdir -p $R; setup
BOTH="--enable_pytorch_run --baseline hf_generate hf_compile"
L8="--model meta-llama/Llama-3.1-8B-Instruct"; G2="--model gpt2"
T="taskset -c"; PT="timeout 525 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider"
(lane_env 0; $T 0-15 $PT -k "low_precision and static_v2" > $R/gpu_tests_static_v2.txt 2>&1
 echo "[lane 0] GPU tests static_v2 rc $?" | tee -a $R/cells.txt) & P0=$!
(lane_env 1; $T 16-31 $PT -k "not (low_precision and static_v2)" > $R/gpu_tests_rest.txt 2>&1
 echo "[lane 1] GPU tests rest rc $?" | tee -a $R/cells.txt) & P1=$!
(lane_env 2; cell 2 l8b_128 330 . run_llm.py $L8 --isl 128 --iterations 5 $BOTH
 cell 2 gpt2_128 190 . run_llm.py $G2 --isl 128 --iterations 5 $BOTH) & P2=$!
(lane_env 3; cell 3 l8b_2048 530 . run_llm.py $L8 --isl 2048 --iterations 3 $BOTH) & P3=$!
wait $P0 $P1 $P2 $P3  # never a bare wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt; grep -hE "passed|failed|FAILED" $R/gpu_tests_*.txt | tail -8
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^(pipeline|hf_)' $f | tr -s ' ' | cut -c1-80 | tr '\n' '|') $(grep -oE 'export [0-9.]+ s, compile [0-9.]+ s' $f)"; done
