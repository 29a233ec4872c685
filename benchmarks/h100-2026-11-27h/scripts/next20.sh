#!/bin/bash
# Session 8, call 4 (x1): Llama-3.2-1B by layer, cold, on a one-GPU machine alone with
# TORCHINDUCTOR_COMPILE_THREADS unset (as run 9's call 2, 79.4 s for the whole graph).
source devrun/lib.sh
unset TORCHINDUCTOR_COMPILE_THREADS
rm -rf $R; R=/tmp/r; mkdir -p $R; setup
lane_env 0
TIMED_SCRIPT=run_llm.py cell 0 l_alone 140 . $PWD/devrun/timed.py --model meta-llama/Llama-3.2-1B-Instruct --isl 128 --iterations 5
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt; grep -E "exported|compiled|layer pieces" $R/l_alone.log; grep "^TUNING" $R/l_alone.log
grep -E "^_compile.compile_inner|fw_compiler_base|async_compile.wait" $R/l_alone.log
echo "$(grep -E '^pipeline|^export' $R/l_alone.log | tr -s ' ' | cut -c1-90 | tr '\n' ' ')"
