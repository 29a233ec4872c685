#!/bin/bash
# Benchmark grid with baselines, committed code. A = ours (cold) + HF generate; B = ours (warm) + HF static + compile.
source devrun/lib.sh
setup
W=$PWD
A="--enable_pytorch_run --baseline hf_generate"; Bc="--enable_pytorch_run --baseline hf_compile"
L1="--model meta-llama/Llama-3.2-1B-Instruct"; L8="--model meta-llama/Llama-3.1-8B-Instruct"
Q5="--model Qwen/Qwen2.5-0.5B-Instruct"; Q3="--model Qwen/Qwen3-0.6B"; G2="--model gpt2"
lane0() { lane_env 0
  cell 0 l1b_128_gen 170 $W run_llm.py $L1 --isl 128 $A
  cell 0 l1b_128_compile 240 $W run_llm.py $L1 --isl 128 $Bc
  cell 0 gpt2_128_gen 110 $W run_llm.py $G2 --isl 128 $A
}
lane1() { lane_env 1
  cell 1 l8b_128_gen 260 $W run_llm.py $L8 --isl 128 $A
  cell 1 l8b_2048_gen 270 $W run_llm.py $L8 --isl 2048 --iterations 3 $A
}
lane2() { lane_env 2
  cell 2 q05_128_gen 160 $W run_llm.py $Q5 --isl 128 $A
  cell 2 q05_128_compile 220 $W run_llm.py $Q5 --isl 128 $Bc
  cell 2 q05_2048_gen 160 $W run_llm.py $Q5 --isl 2048 --iterations 3 $A
}
lane3() { lane_env 3
  cell 3 q3_128_gen 170 $W run_llm.py $Q3 --isl 128 $A
  cell 3 q3_128_compile 220 $W run_llm.py $Q3 --isl 128 $Bc
  cell 3 gpt2_896_gen 150 $W run_llm.py $G2 --isl 896 --iterations 3 $A
}
lane0 & lane1 & lane2 & lane3 &
wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^(pipeline|hf_)' $f | tr -s ' ' | cut -c1-80 | tr '\n' '|') $(grep -oE 'export [0-9.]+ s, compile [0-9.]+ s' $f)"; done
