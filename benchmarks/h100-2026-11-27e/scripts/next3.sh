#!/bin/bash
# Final grid on main (long flush + gated_down): ours at every cell, the baselines run 6 missed.
source devrun/lib.sh
setup
W=$PWD; AB=benchmarks/inductor_ab.py
A="--enable_pytorch_run --baseline hf_generate"; Bc="--enable_pytorch_run --baseline hf_compile"
L1="--model meta-llama/Llama-3.2-1B-Instruct"; L8="--model meta-llama/Llama-3.1-8B-Instruct"
Q5="--model Qwen/Qwen2.5-0.5B-Instruct"; Q3="--model Qwen/Qwen3-0.6B"; G3="--model google/gemma-3-1b-it"; G2="--model gpt2"
lane0() { lane_env 0
  cell 0 l1b_128_gen 190 $W run_llm.py $L1 --isl 128 $A
  cell 0 l1b_2048_compile 200 $W run_llm.py $L1 --isl 2048 --iterations 3 $Bc
  cell 0 l1b_128_nogd 140 $W $AB --without gated_down -- $L1 --isl 128 --iterations 5
}
lane1() { lane_env 1
  cell 1 l8b_128_gen 290 $W run_llm.py $L8 --isl 128 --iterations 5 $A
  cell 1 l8b_2048 230 $W run_llm.py $L8 --isl 2048 --iterations 3
}
lane2() { lane_env 2
  cell 2 q05_128 130 $W run_llm.py $Q5 --isl 128
  cell 2 q05_2048 110 $W run_llm.py $Q5 --isl 2048 --iterations 3
  cell 2 q3_128_gen 180 $W run_llm.py $Q3 --isl 128 --iterations 3 $A
  cell 2 q3_2048 110 $W run_llm.py $Q3 --isl 2048 --iterations 3
}
lane3() { lane_env 3
  cell 3 g3_128_gen 230 $W run_llm.py $G3 --isl 128 --iterations 3 $A
  cell 3 g3_2048 150 $W run_llm.py $G3 --isl 2048 --iterations 3
  cell 3 gpt2_128_compile 140 $W run_llm.py $G2 --isl 128 $Bc
}
lane0 & lane1 & lane2 & lane3 &
wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^(pipeline|hf_)' $f | tr -s ' ' | cut -c1-80 | tr '\n' '|') $(grep -oE 'export [0-9.]+ s, compile [0-9.]+ s' $f)"; done
