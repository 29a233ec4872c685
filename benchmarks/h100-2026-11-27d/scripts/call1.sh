#!/bin/bash
# A/B: HEAD (devrun/base) vs working tree (attention output [B,S,H,D]; decode gate/up apart) vs
# working tree without gate_up_apart; GPU tests of the working tree. Four lanes, one per GPU.
source devrun/lib.sh
setup
W=$PWD; BASE=$PWD/devrun/base; AB=benchmarks/inductor_ab.py
L="--model meta-llama/Llama-3.2-1B-Instruct"; Q="--model Qwen/Qwen2.5-0.5B-Instruct"
lane0() { lane_env 0
  cell 0 base_l128 170 $BASE run_llm.py $L --isl 128 --iterations 5
  cell 0 base_q128 150 $BASE run_llm.py $Q --isl 128 --iterations 5
  cell 0 base_l2048 170 $BASE run_llm.py $L --isl 2048 --iterations 3
}
lane1() { lane_env 1
  cell 1 new_l128 170 $W run_llm.py $L --isl 128 --iterations 5 --profile /tmp/new_l128.json
  cell 1 new_q128 150 $W run_llm.py $Q --isl 128 --iterations 5 --profile /tmp/new_q128.json
  cell 1 new_l2048 170 $W run_llm.py $L --isl 2048 --iterations 3 --profile /tmp/new_l2048.json
}
lane2() { lane_env 2
  cell 2 fused_l128 170 $W $AB --without gate_up_apart -- $L --isl 128 --iterations 5
  cell 2 fused_q128 150 $W $AB --without gate_up_apart -- $Q --isl 128 --iterations 5
  (taskset -c 32-47 timeout 210 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
     -k "eager or decode_kernel or sdpa_decode" > $R/gpu_tests_eager.txt 2>&1)
  echo "[lane 2] eager tests rc $?" | tee -a $R/cells.txt
}
lane3() { lane_env 3
  (taskset -c 48-63 timeout 520 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
     -k "inductor" > $R/gpu_tests_inductor.txt 2>&1)
  echo "[lane 3] inductor tests rc $?" | tee -a $R/cells.txt
}
lane0 & lane1 & lane2 & lane3 &
wait
python3 devrun/trace_summary.py /tmp/new_l128.json 127 > $R/new_l128_kernels.txt 2>&1
python3 devrun/trace_summary.py /tmp/new_q128.json 127 > $R/new_q128_kernels.txt 2>&1
python3 devrun/prefill_summary.py /tmp/new_l2048.json > $R/new_l2048_prefill.txt 2>&1
tar czf $OUT/r.tgz -C /tmp r
head -16 $R/new_l128_kernels.txt | cut -c1-140; head -12 $R/new_q128_kernels.txt | cut -c1-140; head -12 $R/new_l2048_prefill.txt | cut -c1-140
grep -hE "passed|failed" $R/gpu_tests_*.txt | tail -4
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^pipeline' $f | tr -s ' ' | cut -c1-90) | $(grep -oE 'export [0-9.]+ s, compile [0-9.]+ s' $f)"; done
