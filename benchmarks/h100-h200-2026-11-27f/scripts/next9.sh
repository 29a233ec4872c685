#!/bin/bash
# Session 6, call 2 (x2, main): GPU tests run 7 did not repeat (FP16, decode kernel, SDPA
# decode); Llama-3.2-1B cold compile beside one other process; Qwen2.5-0.5B at ISL 2048 with HF
# static + compile. GPU clocks logged throughout.
source devrun/lib.sh
rm -rf $R; mkdir -p $R; setup
W=$PWD; Bc="--enable_pytorch_run --baseline hf_compile --iterations 3"
nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 500 > $R/clocks.csv 2>&1 & SMI=$!
tests() { # lane limit name -k
  (cd $W && taskset -c $((16*$1))-$((16*$1+15)) timeout $2 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
     -k "$4" > $R/gpu_tests_$3.txt 2>&1)
  echo "[lane $1] GPU tests $3 rc $?" | tee -a $R/cells.txt
}
lane0() { lane_env 0; tests 0 420 fp16_kernel "FP16 or decode_kernel or sdpa_decode"; }
lane1() { lane_env 1
  cell 1 l1b_128 150 $W run_llm.py --model meta-llama/Llama-3.2-1B-Instruct --isl 128
  cell 1 q05_2048_compile 230 $W run_llm.py --model Qwen/Qwen2.5-0.5B-Instruct --isl 2048 $Bc; }
lane0 & lane1 &
wait
kill $SMI
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt; grep -hE "passed|failed" $R/gpu_tests_*.txt | tail -4
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^(pipeline|hf_)' $f | tr -s ' ' | cut -c1-70 | tr '\n' '|')"; done
