"""Time one decode step's attention (one new token over a static KV cache) at the head shapes of
the supported text models, as the decode graph runs it: PyTorch's masked SDPA (``--decode_attention
sdpa``) against the split-K Triton kernel (default), the latter with several minimum split lengths.

Each variant runs 48 times back to back inside one CUDA graph (a decode step's layers are back to
back too), replayed 20 times; the figure is microseconds per call. Needs a CUDA GPU.

    python3 benchmarks/decode_attention_bench.py [--json PATH]
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchmark  # noqa: E402
import decode_attention  # noqa: E402
import models  # noqa: E402
import register_sdpa  # noqa: E402
import tensor_parallel  # noqa: E402

MODELS = ["Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.2-1B-Instruct", "Qwen/Qwen3-0.6B",
          "google/gemma-3-1b-it", "meta-llama/Llama-3.1-8B-Instruct", "gpt2"]
CACHE_LENGTHS = [256, 2176]  # ISL 128 and 2048, plus 128 new tokens
MIN_SPLITS = [128, 256, 512, 1 << 30]  # the last: always one split
CALLS = 48  # per CUDA graph, back to back like the layers of a decode step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, bf16, batch 1")
    results = []
    header = f"{'model':<34} {'keys':>5} {'sdpa us':>8} " + " ".join(
        f"{'split>=' + (str(m) if m < 1 << 20 else 'all'):>11}" for m in MIN_SPLITS)
    print(header)
    for model in MODELS:
        q_heads, kv_heads, head_dim = tensor_parallel.attention_heads(
            models.load_config(model, random_weights=True).get_text_config())
        for length in CACHE_LENGTHS:
            q = torch.randn(1, q_heads, 1, head_dim, device=device, dtype=torch.bfloat16)
            k, v = (torch.randn(1, kv_heads, length, head_dim, device=device, dtype=torch.bfloat16) for _ in "kv")
            position = torch.tensor([length - 1], device=device)
            mask = register_sdpa.visible_keys(position, length, 0)
            scale = head_dim**-0.5
            row = {"model": model, "heads": [q_heads, kv_heads, head_dim], "keys": length,
                   "sdpa_us": benchmark.graph_us_per_call(
                       [lambda: register_sdpa._masked_gqa_sdpa(q, k, v, mask, scale)] * CALLS)}
            for minimum in MIN_SPLITS:
                splits = decode_attention.plan(1, kv_heads, length, head_dim,
                                               decode_attention.num_sms(device.index or 0), minimum)[2]
                row[f"triton_min{minimum}_us"] = benchmark.graph_us_per_call(
                    [lambda: decode_attention.attend(q, k, v, position, scale, 0, minimum)] * CALLS)
                row[f"triton_min{minimum}_splits"] = splits
            results.append(row)
            print(f"{model:<34} {length:>5} {row['sdpa_us']:>8.2f} " + " ".join(
                f"{row[f'triton_min{m}_us']:>7.2f} ({row[f'triton_min{m}_splits']:>2})" for m in MIN_SPLITS))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
