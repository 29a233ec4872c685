#!/bin/bash
# Session 8, call 1 (x2): the graph compiled per distinct layer piece (this tree) against the whole
# graph (inductor_ab --without layer_split), one lane each, every cell cold in its lane's caches
# except the no-CUDA-graph Qwen cells; compile breakdown (devrun/timed.py) and kernel summaries.
source devrun/lib.sh
rm -rf $R; R=/tmp/r; mkdir -p $R; setup
AB=benchmarks/inductor_ab.py; T=$PWD/devrun/timed.py
Q="--model Qwen/Qwen2.5-0.5B-Instruct --isl 128 --iterations 5"
L="--model meta-llama/Llama-3.2-1B-Instruct --isl 128 --iterations 5"
G="--model google/gemma-3-1b-it --isl 128 --iterations 5"
summary() { python3 devrun/trace_summary.py /tmp/$1.json 127 > $R/$1_kernels.txt 2>&1; }
(lane_env 0; export TIMED_SCRIPT=run_llm.py
 cell 0 l_split 200 . $T $L --profile /tmp/l_split.json; summary l_split
 cell 0 q_split 200 . $T $Q --profile /tmp/q_split.json; summary q_split
 (B=${B/--cudagraph/}; cell 0 qn_split 100 . run_llm.py $Q)
 cell 0 g_split 200 . $T $G) & P0=$!
(lane_env 1; export TIMED_SCRIPT=$AB
 cell 1 l_whole 200 . $T --without layer_split -- $L --profile /tmp/l_whole.json; summary l_whole
 cell 1 q_whole 200 . $T --without layer_split -- $Q --profile /tmp/q_whole.json; summary q_whole
 (B=${B/--cudagraph/}; cell 1 qn_whole 100 . $AB --without layer_split -- $Q)
 cell 1 g_whole 200 . $T --without layer_split -- $G) & P1=$!
wait $P0 $P1  # never a bare wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt
for f in $R/*_kernels.txt; do echo "$f"; grep -A3 "^per step" $f; done
for f in $R/?_*.log; do echo "== $f"; grep -E "exported|compiled|layer pieces" $f; grep "^TUNING" $f; grep -E "^_compile.compile_inner|fw_compiler_base|async_compile.wait" $f; done
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^pipeline|^export' $f | tr -s ' ' | cut -c1-70 | tr '\n' ' ')"; done
