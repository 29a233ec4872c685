"""run_llm.py as a user runs it: the bundled default model's answer, the JSON it writes, the
benchmark's JSON/CSV on CPU, and one clear line with a non-zero exit for each bad input. Runs
``run_llm.main(argv)`` in this process, except where the process is the point: the hub settings
read at import and concurrent appends (several processes). sweep.sh's tests: test_sweep.py."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import transformers

import models
import run_llm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(capsys, *args):
    """``run_llm.main(args)`` in this process: (stdout, stderr)."""
    run_llm.main(list(args))
    return capsys.readouterr()


def failing_main(capsys, *args):
    """``run_llm.main(args)``, which must exit non-zero: (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run_llm.main(list(args))
    return exit_info.value.code, capsys.readouterr().err


def error_line(stderr):
    """The one ``error:`` line of a failed run's stderr (and no traceback)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def run_cli(*args, env=None):
    """run_llm.py in a new process, for what is read at import (the hub's settings)."""
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_llm.py"), *args],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def test_default_model_answers_paris_like_transformers(tmp_path, capsys):
    out = tmp_path / "run.json"
    stdout, _ = run_main(capsys, "--cache", "static_v2", "--output_json", str(out))
    assert "Paris" in stdout
    data = json.loads(out.read_text())
    for key in ("model", "backend", "cache", "precision", "device", "input_token_ids", "generated_token_ids",
                "generated_text", "versions"):
        assert key in data, key
    assert data["backend"] == "eager" and data["cache"] == "static_v2" and data["device"] == "cpu"
    assert {"torch", "transformers", "python"} <= set(data["versions"])
    assert "Paris" in data["generated_text"][0]

    folder = models.smollm2_dir()
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32)
    prompt = torch.tensor(data["input_token_ids"])
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64, do_sample=False)
    assert data["generated_token_ids"][0] == expected[0, prompt.shape[1]:].tolist()


def test_benchmark_json_and_csv_on_cpu(tiny_llama_dir, tmp_path, capsys):
    out, table = tmp_path / "bench.json", tmp_path / "results.csv"
    common = ["--model", str(tiny_llama_dir), "--benchmark", "--isl", "16", "--num_tokens", "6", "--iterations", "2",
              "--warmup", "0", "--results_csv", str(table)]
    stdout, stderr = run_main(capsys, *common, "--output_json", str(out), "--enable_pytorch_run", "--baseline", "all")
    data = json.loads(out.read_text())
    bench = data["benchmark"]
    for key in ("ttft_ms", "tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms", "decode_tokens_per_s", "e2e_ms",
                "achieved_gb_per_s", "card", "peak_memory_gb"):
        assert key in bench, key
    assert bench["card"] == "CPU" and 0 < bench["tpot_p50_ms"] <= bench["tpot_p99_ms"]
    assert bench["peak_memory_gb"] > 0  # the process's peak resident memory: the same fields as on a GPU
    assert set(data["baselines"]) == {"hf_generate", "hf_compile", "no_cache"}
    assert {"export_s", "compile_s"} <= set(data["timings_s"])
    assert "speedup" in stdout and "hf_generate" in stdout
    assert "pipeline: TTFT" in stderr and "no_cache: TTFT" in stderr  # logged as measured

    run_main(capsys, *common, "--cache", "static_v1", "--enable_pytorch_run", "--baseline", "no_cache", "hf_generate")
    rows = list(csv.DictReader(table.open()))
    assert [r["runner"] for r in rows] == ["pipeline", "hf_generate", "hf_compile", "no_cache",
                                           "pipeline", "no_cache", "hf_generate"]
    assert rows[4]["cache"] == "static_v1" and float(rows[4]["tpot_p50_ms"]) > 0


def test_failed_run_keeps_earlier_results(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "keep.json"
    out.write_text('{"earlier": true}\n')
    status, stderr = failing_main(capsys, "--model", str(tiny_llama_dir), "--benchmark", "--isl", "131000",
                                  "--num_tokens", "100", "--output_json", str(out))
    assert status == 2 and "positions" in error_line(stderr)
    assert json.loads(out.read_text()) == {"earlier": True}


def corrupt_config_dir(tmp_path):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    return folder


def bert_dir(tmp_path):
    folder = tmp_path / "bert"
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config.save_pretrained(folder)
    return folder


def empty_dir(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def a_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    return path


BAD_INPUTS = {
    "missing path": (lambda t: ["--model", str(t / "nowhere" / "model")], "not a local folder"),
    "unknown hub id": (lambda t: ["--model", "no-such-org/no-such-model"], "not in the Hugging Face cache"),
    "file not folder": (lambda t: ["--model", str(a_file(t))], "is a file"),
    "empty folder": (lambda t: ["--model", str(empty_dir(t))], "no config.json"),
    "corrupt config": (lambda t: ["--model", str(corrupt_config_dir(t))], "not a valid model config"),
    "unsupported architecture": (lambda t: ["--model", str(bert_dir(t))], "unsupported architecture"),
    "unknown cache": (lambda t: ["--cache", "paged"], "--cache"),
    "unknown precision": (lambda t: ["--precision", "FP8"], "--precision"),
    "zero tokens": (lambda t: ["--num_tokens", "0"], "must be >= 1"),
    "unknown baseline": (lambda t: ["--enable_pytorch_run", "--baseline", "vllm"], "--baseline"),
    "unknown tuning": (lambda t: ["--tune", "max"], "--tune"),
    "too long for gpt2": (
        lambda t: ["--model", "gpt2", "--random_weights", "--benchmark", "--isl", "1000", "--num_tokens", "100"],
        "1100 positions but the model has 1024",
    ),
    "no tokenizer offline": (lambda t: ["--model", "gpt2", "--random_weights"], "no tokenizer"),
    "vision-language model": (lambda t: ["--model", "nvidia/Eagle2-2B", "--random_weights"], "use run_vlm.py"),
    "random weights unknown": (lambda t: ["--model", "acme/unknown", "--random_weights"], "bundled config"),
}
if not torch.cuda.is_available():
    BAD_INPUTS["no GPU"] = (lambda t: ["--device", "cuda"], "no CUDA GPU")
    BAD_INPUTS["tensorrt without GPU"] = (lambda t: ["--backend", "tensorrt"], "needs a CUDA GPU")
    BAD_INPUTS["cudagraph on CPU"] = (lambda t: ["--cudagraph"], "CUDA")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line(case, tmp_path, capsys):
    make_args, message = BAD_INPUTS[case]
    status, stderr = failing_main(capsys, *make_args(tmp_path))
    assert status == 2, stderr  # argparse's errors and UserError alike
    assert message in error_line(stderr), stderr


NO_HUB = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}  # a hub endpoint that refuses connections


def test_unreachable_hub_is_one_line_without_retries():
    """A hub id that is not cached, with no hub to ask: one line at once, not the hub client's
    retries first."""
    result = run_cli("--model", "no-such-org/no-such-model", env=NO_HUB)
    assert result.returncode != 0 and "Retrying" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "127.0.0.1:9) is unreachable" in lines[0], result.stderr


def test_cached_hub_model_runs_without_the_hub(tiny_llama_dir, tmp_path):
    """A hub id in the local Hugging Face cache, with no hub to ask: it runs from the cache
    without the hub client's retries (which took 3 minutes for this model before)."""
    revision = "0" * 40
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    shutil.copytree(tiny_llama_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    result = run_cli("--model", "acme/tiny-llama", "--benchmark", "--isl", "8", "--num_tokens", "2",
                     "--iterations", "1", env={**NO_HUB, "HF_HOME": str(tmp_path)})
    assert result.returncode == 0 and "Retrying" not in result.stderr, result.stderr
    assert "using the local Hugging Face cache only" in result.stderr


def test_tensorrt_absent_is_explained(monkeypatch):
    import backends
    from utils import UserError

    monkeypatch.setattr(backends, "tensorrt_import_error", lambda: "ModuleNotFoundError: No module named 'tensorrt'")
    with pytest.raises(UserError, match="torch_tensorrt is not usable here"):
        backends.choose_backend("tensorrt", torch.device("cuda"))
    assert backends.choose_backend("auto", torch.device("cuda")) == "inductor"
    assert backends.choose_backend("auto", torch.device("cpu")) == "eager"


def _append_rows(path, writer):
    import benchmark

    for i in range(20):
        benchmark.append_csv(path, [{"model": f"{writer}-{i}", "runner": "pipeline"}])


def test_concurrent_csv_appends_keep_every_row(tmp_path):
    """Processes appending to one --results_csv at once (the file is rewritten whole on each
    append) lose nothing: each append holds a lock around its read and rewrite."""
    import multiprocessing

    path = tmp_path / "results.csv"
    workers = [multiprocessing.get_context("fork").Process(target=_append_rows, args=(path, w)) for w in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert all(worker.exitcode == 0 for worker in workers)
    assert sorted(row["model"] for row in csv.DictReader(path.open())) == sorted(
        f"{w}-{i}" for w in range(6) for i in range(20))
