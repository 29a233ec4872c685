#!/bin/bash
# Session 9, call 5 (x4): the new GPU tests, Inductor (whole graph, no CUDA graphs) with the
# static_v1, dynamic and no-cache modes in BF16 on every family, four lanes.
source devrun/lib.sh
rm -rf $R; R=/tmp/r; mkdir -p $R; setup
for l in 0 1 2 3; do
  (lane_env $l; taskset -c $((16*l))-$((16*l+15)) timeout 200 python3 -m pytest -q -s -p no:cacheprovider \
     $(cat devrun/ids$l.txt) > $R/gpu_tests_$l.txt 2>&1; echo "[lane $l] rc $?" | tee -a $R/cells.txt) &
  eval P$l=$!
done
wait $P0 $P1 $P2 $P3  # never a bare wait
tar czf $OUT/r.tgz -C /tmp r
grep -h "max rel err" $R/gpu_tests_*.txt; grep -hE "passed|failed|FAILED|Error" $R/gpu_tests_*.txt | tail -12
