#!/bin/bash
# Session 9, call 4 (x1, main at 6b70c1a): is run 10's 57.5 s cold export + compile of
# Llama-3.2-1B on one H100 alone reproducible? Two cold processes in turn, each with its own
# empty Inductor and Triton caches, TORCHINDUCTOR_COMPILE_THREADS unset (as run 10, call 4).
source devrun/lib.sh
unset TORCHINDUCTOR_COMPILE_THREADS
rm -rf $R; R=/tmp/r; mkdir -p $R; setup
lane_env 0
for i in 1 2; do export TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$i TRITON_CACHE_DIR=/tmp/tri_$i
  TIMED_SCRIPT=run_llm.py cell 0 alone_$i 140 . $PWD/devrun/timed.py --model meta-llama/Llama-3.2-1B-Instruct --isl 128 --iterations 5
done
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt
for f in $R/alone_*.log; do echo "== $f"; grep -E "exported|compiled|layer pieces" $f; grep "^TUNING" $f
  grep -E "^_compile.compile_inner|async_compile.wait" $f; grep -E '^pipeline' $f | tr -s ' ' | cut -c1-90; done
