#!/bin/bash
# Rest of the grid (Gemma 3, Llama-8B hf_compile, long prompts), the rest of the GPU tests.
source devrun/lib.sh
setup
W=$PWD
A="--enable_pytorch_run --baseline hf_generate"; Bc="--enable_pytorch_run --baseline hf_compile"
L1="--model meta-llama/Llama-3.2-1B-Instruct"; L8="--model meta-llama/Llama-3.1-8B-Instruct"
Q3="--model Qwen/Qwen3-0.6B"; G3="--model google/gemma-3-1b-it"; G2="--model gpt2"
lane0() { lane_env 0
  cell 0 g3_128_gen 180 $W run_llm.py $G3 --isl 128 $A
  cell 0 g3_128_compile 370 $W run_llm.py $G3 --isl 128 $Bc
}
lane1() { lane_env 1
  cell 1 l8b_128_compile 375 $W run_llm.py $L8 --isl 128 $Bc
  cell 1 q3_128_gen 175 $W run_llm.py $Q3 --isl 128 $A
}
lane2() { lane_env 2
  cell 2 l1b_2048_gen 170 $W run_llm.py $L1 --isl 2048 --iterations 3 $A
  cell 2 q3_2048_gen 170 $W run_llm.py $Q3 --isl 2048 --iterations 3 $A
  cell 2 g3_2048_gen 200 $W run_llm.py $G3 --isl 2048 --iterations 3 $A
}
lane3() { lane_env 3
  (taskset -c 48-63 timeout 540 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider \
     -k "decode_kernel or sdpa_decode or qwen_vl or eagle2" > $R/gpu_tests_rest.txt 2>&1)
  echo "[lane 3] rest of the GPU tests rc $?" | tee -a $R/cells.txt
}
lane0 & lane1 & lane2 & lane3 &
wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt
grep -hE "passed|failed" $R/gpu_tests_rest.txt | tail -2
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^(pipeline|hf_)' $f | tr -s ' ' | cut -c1-80 | tr '\n' '|') $(grep -oE 'export [0-9.]+ s, compile [0-9.]+ s' $f)"; done
