#!/bin/bash
# Session 6, call 1 (x4): tllm::norm_linear (RMSNorm + product, residual add taken in) against
# Inductor's norms, same host; GPU tests through it; GPU clocks logged throughout.
source devrun/lib.sh
rm -rf $R; mkdir -p $R; setup
W=$PWD; AB=benchmarks/inductor_ab.py
L="--model meta-llama/Llama-3.2-1B-Instruct --isl 128 --iterations 5"
Q="--model Qwen/Qwen2.5-0.5B-Instruct --isl 128 --iterations 5"
G="--model google/gemma-3-1b-it --isl 128 --iterations 5"
Q3="--model Qwen/Qwen3-0.6B --isl 128 --iterations 5"
nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 500 > $R/clocks.csv 2>&1 & SMI=$!
lane0() { lane_env 0
  (cd $W && taskset -c 0-15 timeout 500 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
     -k "norm_linear or (static_v2 and BF16 and not static_v1)" > $R/gpu_tests.txt 2>&1)
  echo "[lane 0] GPU tests rc $?" | tee -a $R/cells.txt
}
lane1() { lane_env 1
  cell 1 q_nl 200 $W run_llm.py $Q --profile /tmp/q_nl.json
  cell 1 q_inductor 200 $W $AB --without norm_linear -- $Q
}
lane2() { lane_env 2
  cell 2 l_nl 200 $W run_llm.py $L --profile /tmp/l_nl.json
  cell 2 l_inductor 200 $W $AB --without norm_linear -- $L
}
lane3() { lane_env 3
  cell 3 g_nl 220 $W run_llm.py $G
  cell 3 q3_nl 200 $W run_llm.py $Q3
}
lane0 & lane1 & lane2 & lane3 &
wait
kill $SMI
python3 devrun/trace_summary.py /tmp/q_nl.json 127 > $R/q_nl_kernels.txt 2>&1
python3 devrun/trace_summary.py /tmp/l_nl.json 127 > $R/l_nl_kernels.txt 2>&1
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt; grep -hE "passed|failed|error" $R/gpu_tests.txt | tail -3
head -12 $R/q_nl_kernels.txt | cut -c1-110; head -4 $R/l_nl_kernels.txt | cut -c1-110
for f in $R/*.log; do echo "$(basename $f .log): $(grep -oE '\[tllm\] (pipeline|RMSNorm|compiled)[^\r]*' $f | tr '\n' ' ')"; grep -m2 -E "Error|error" $f | cut -c1-200; done
