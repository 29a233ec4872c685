#!/bin/bash
# Next session, call 2 (x4, with branch exp/gated-down checked out): the gated down-projection
# kernel against Inductor's, same host; GPU tests through the kernel.
source devrun/lib.sh
setup
W=$PWD/devrun/gd; AB=benchmarks/inductor_ab.py
L="--model meta-llama/Llama-3.2-1B-Instruct --isl 128 --iterations 5"
Q="--model Qwen/Qwen2.5-0.5B-Instruct --isl 128 --iterations 5"
G="--model google/gemma-3-1b-it --isl 128 --iterations 5"
lane0() { lane_env 0
  cell 0 l_inductor 200 $W $AB --without gated_down -- $L
  cell 0 q_inductor 200 $W $AB --without gated_down -- $Q
}
lane1() { lane_env 1
  cell 1 l_kernel 200 $W run_llm.py $L --profile /tmp/l_kernel.json
  cell 1 q_kernel 200 $W run_llm.py $Q --profile /tmp/q_kernel.json
}
lane2() { lane_env 2
  cell 2 g_kernel 220 $W run_llm.py $G
  cell 2 g_inductor 220 $W $AB --without gated_down -- $G
}
lane3() { lane_env 3
  (cd $W && taskset -c 48-63 timeout 480 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
     -k "static_v2 and BF16 and not static_v1" > $R/gpu_tests_gated.txt 2>&1)
  echo "[lane 3] GPU tests rc $?" | tee -a $R/cells.txt
}
lane0 & lane1 & lane2 & lane3 &
wait
python3 devrun/trace_summary.py /tmp/l_kernel.json 127 > $R/l_kernel_kernels.txt 2>&1
python3 devrun/trace_summary.py /tmp/q_kernel.json 127 > $R/q_kernel_kernels.txt 2>&1
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt; grep -hE "passed|failed" $R/gpu_tests_gated.txt | tail -2
head -8 $R/l_kernel_kernels.txt | cut -c1-120; head -8 $R/q_kernel_kernels.txt | cut -c1-120
for f in $R/*.log; do echo "$(basename $f .log): $(grep -oE '\[tllm\] (pipeline|gated MLP)[^\r]*' $f | tr '\n' ' ')"; done
