# Shared helpers for the device calls: lane L runs on GPU L with 16 CPU cores and its own
# Inductor/Triton caches (cold, like a one-GPU machine). Results under /tmp/r.
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=16
R=/tmp/r; mkdir -p $R
B="--random_weights --benchmark --precision BF16 --num_tokens 128 --cudagraph --backend inductor"
setup() {
  python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -1
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv > $R/card.txt
  python3 -c "import torch,triton,transformers;print(torch.__version__,triton.__version__,transformers.__version__)" >> $R/card.txt
  cat $R/card.txt
}
lane_env() { # lane
  export CUDA_VISIBLE_DEVICES=$1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind$1 TRITON_CACHE_DIR=/tmp/tri$1
}
cell() { # lane name limit dir script args...   (dir: where run_llm.py lives)
  local lane=$1 name=$2 limit=$3 dir=$4 script=$5; shift 5
  local t0=$(date +%s)
  (cd $dir && taskset -c $((16*lane))-$((16*lane+15)) timeout $limit python3 $script $B "$@" \
     --output_json $R/$name.json > $R/$name.log 2>&1); local rc=$?
  echo "[lane $lane] $name rc $rc $(( $(date +%s) - t0 )) s" | tee -a $R/cells.txt
}
