"""Time serve.py as a client sees it: start the server with the given flags, then for each
number of concurrent clients stream completions through the official ``openai`` client and
measure each request's time to first token and its decode rate (new tokens after the first,
over the time after the first). Prints a table, writes JSON.

    python benchmarks/serve_bench.py --clients 1 8 --requests 3 --out serve.json -- \\
        --model meta-llama/Llama-3.2-1B-Instruct --random_weights --backend inductor --cudagraph \\
        --batch_size 8 --max_len 256 --ignore_eos

Everything after ``--`` goes to serve.py (``--port 0`` is added: the server picks a free port
and says which). Only this machine's loopback address is used.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"serving (\S+) at (http://\S+/v1)")


def start_server(flags, log_path, timeout=900):
    """serve.py with ``flags`` on a free port; (process, base URL, model name) once it serves."""
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), *flags, "--port", "0"],
                               stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = SERVING.search(Path(log_path).read_text())
        if found:
            return process, found.group(2), found.group(1)
        if process.poll() is not None:
            raise SystemExit(f"serve.py exited ({process.returncode}): see {log_path}")
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"serve.py did not start in {timeout} s: see {log_path}")


def one_request(client, model, prompt, max_tokens):
    """One streamed completion: (seconds to the first text, new tokens, seconds in all)."""
    start = time.perf_counter()
    first = None
    tokens = 0
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first, tokens, time.perf_counter() - start


def measure(client, model, prompt, max_tokens, clients, requests):
    """``clients`` threads, ``requests`` streamed completions each; the per-request figures."""
    results, failures = [], []

    def user():
        for _ in range(requests):
            try:
                results.append(one_request(client, model, prompt, max_tokens))
            except Exception as e:  # counted: a benchmark of a server must say what it lost
                failures.append(repr(e))

    threads = [threading.Thread(target=user) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ttft = [first for first, _, _ in results]
    rates = [(tokens - 1) / (total - first) for first, tokens, total in results if tokens > 1]
    return {"clients": clients, "requests": len(results), "failed": len(failures), "failures": failures[:3],
            "ttft_ms_p50": 1e3 * statistics.median(ttft), "ttft_ms_max": 1e3 * max(ttft),
            "tokens_per_s_per_client_p50": statistics.median(rates),
            "tokens_per_s_total": sum(tokens for _, tokens, _ in results) / wall,
            "completion_tokens": [tokens for _, tokens, _ in results]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=3, help="streamed completions per client")
    parser.add_argument("--prompt_words", type=int, default=100, help="the prompt: this many words")
    parser.add_argument("--max_tokens", type=int, default=128)
    parser.add_argument("--out", default="serve_bench.json")
    parser.add_argument("server_flags", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    flags = [f for f in args.server_flags if f != "--"]
    process, url, model = start_server(flags, Path(args.out).with_suffix(".log"))
    try:
        client = openai.OpenAI(base_url=url, api_key="-", timeout=600, max_retries=0)
        prompt = " ".join(["word"] * args.prompt_words)
        one_request(client, model, prompt, args.max_tokens)  # compiles and captures this prompt's length
        rows = [measure(client, model, prompt, args.max_tokens, n, args.requests) for n in args.clients]
    finally:
        process.terminate()
        process.wait(timeout=60)
    Path(args.out).write_text(json.dumps({"server_flags": flags, "rows": rows}, indent=2))
    print(f"{'clients':>7} {'requests':>8} {'failed':>6} {'TTFT p50 ms':>11} {'TTFT max ms':>11} "
          f"{'tok/s/client':>12} {'tok/s total':>11}")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['failed']:>6} {r['ttft_ms_p50']:>11.1f} "
              f"{r['ttft_ms_max']:>11.1f} {r['tokens_per_s_per_client_p50']:>12.1f} {r['tokens_per_s_total']:>11.1f}")


if __name__ == "__main__":
    main()
