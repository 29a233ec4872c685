#!/bin/bash
# Call 2 (x1): the compile alone on a one-GPU machine (Llama-3.2-1B, then Qwen2.5-0.5B, each cold,
# with devrun/timed.py's breakdown), then each again warm with --without fed_back (same kernels).
source devrun/lib.sh
unset TORCHINDUCTOR_COMPILE_THREADS  # as a user runs it
rm -rf $R; R=/tmp/r; mkdir -p $R; setup
AB=benchmarks/inductor_ab.py; T=$PWD/devrun/timed.py
Q="--model Qwen/Qwen2.5-0.5B-Instruct --isl 128 --iterations 5"
L="--model meta-llama/Llama-3.2-1B-Instruct --isl 128 --iterations 5"
summary() { python3 devrun/trace_summary.py /tmp/$1.json 127 > $R/$1_kernels.txt 2>&1; }
lane_env 0
TIMED_SCRIPT=run_llm.py cell 0 l_main 200 . $T $L --profile /tmp/l_main.json; summary l_main
TIMED_SCRIPT=run_llm.py cell 0 q_main 200 . $T $Q --profile /tmp/q_main.json; summary q_main
TIMED_SCRIPT=$AB cell 0 l_copies 150 . $T --without fed_back -- $L --profile /tmp/l_copies.json; summary l_copies
TIMED_SCRIPT=$AB cell 0 q_copies 150 . $T --without fed_back -- $Q --profile /tmp/q_copies.json; summary q_copies
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt
for f in $R/*_kernels.txt; do echo "$f"; grep -A3 "^per step" $f; done
for f in $R/?_main.log; do echo $f; grep -E "exported|compiled" $f; grep -A12 "^TUNING" $f; grep -E "compile_inner|call_user_compiler|aot_collect|fw_compiler_base|GraphLowering.run|GraphLowering.codegen|async_compile.wait|coordinate_descent|bytecode_tracing" $f; done
for f in $R/*.log; do echo "$(basename $f .log): $(grep -E '^pipeline|^export' $f | tr -s ' ' | cut -c1-70 | tr '\n' ' ')"; done
