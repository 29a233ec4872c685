#!/bin/bash
# Next session, call 1 (x4, main): does timing tuning candidates from a CUDA graph narrow the
# spread between compiles? Two cold compiles per lane (own cache dirs), default vs TUNE_GRAPH=1.
source devrun/lib.sh
setup
W=$PWD
L="--model meta-llama/Llama-3.2-1B-Instruct --isl 128 --iterations 5"
Q="--model Qwen/Qwen3-0.6B --isl 128 --iterations 5"
two() { # lane tag envs model-args
  local lane=$1 tag=$2 envs=$3; shift 3
  for k in a b; do
    lane_env $lane; export TORCHINDUCTOR_CACHE_DIR=/tmp/ind${lane}$k TRITON_CACHE_DIR=/tmp/tri${lane}$k
    (export $envs; cell $lane ${tag}_$k 230 $W devrun/tune_graph.py "$@")
  done
}
two 0 l_default TUNE_GRAPH=0 $L &
two 1 l_graph TUNE_GRAPH=1 $L &
two 2 l_flush TUNE_FLUSH_MB=256 $L &
two 3 q3_flush TUNE_FLUSH_MB=256 $Q &
wait
tar czf $OUT/r.tgz -C /tmp r
cat $R/cells.txt
for f in $R/*.log; do echo "$(basename $f .log): $(grep -oE '\[tllm\] pipeline: TTFT [0-9.]+ ms, TPOT p50 [0-9.]+' $f) $(grep -oE 'compiled \([0-9.]+ s\)' $f) $(grep -oE 'through a graph: [0-9]+, plain: [0-9]+; coordinate-descent benchmarks: [0-9]+' $f)"; done
