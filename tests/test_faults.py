"""Bad inputs and faults, one test per pattern, each with several cases, run in process: every
case ends with exit status 2, exactly one `error:` line on stderr and no traceback, and result
files written before it stay byte for byte as they were.

- outputs are checked before any work, and a failure to write one at the end loses nothing;
- a results CSV keeps one set of columns, and output files get the usual permissions;
- broken model files, configs, tokenizers and prompts get a diagnosis naming what is wrong;
  the converted default model is checked and rebuilt, and a conversion leaves no half folder;
- flags that would have no effect are refused rather than ignored;
- a model whose weights cannot fit is refused before loading.
"""

import csv
import json
import os
import shutil
import stat

import pytest
import torch

import cli
import models
import run_llm
from tiny import tiny_config

BENCH = ["--benchmark", "--isl", "8", "--num_tokens", "3", "--iterations", "1", "--warmup", "0"]


@pytest.fixture
def tiny_llama(tiny_llama_dir):
    return tiny_llama_dir


@pytest.fixture
def earlier(tmp_path):
    """Result files from an earlier run; the test checks they are untouched."""
    files = {tmp_path / "earlier.json": b'{"earlier": true}\n', tmp_path / "earlier.csv": b"model,runner\nm,pipeline\n"}
    for path, data in files.items():
        path.write_bytes(data)
    yield files
    for path, data in files.items():
        assert path.read_bytes() == data, f"{path} changed"


def refused(argv, capsys, message, only_line=True):
    """Run run_llm.py's main in process; it must exit 2 with one `error:` line holding
    ``message`` (and, with ``only_line``, nothing else on stderr: refused before any work)."""
    with pytest.raises(SystemExit) as exit_info:
        run_llm.main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    if only_line:
        assert err.strip().splitlines() == errors, err
    return errors[0], captured.out


def test_unwritable_outputs_are_refused_before_loading(tiny_llama, tmp_path, earlier, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    model = ["--model", str(tiny_llama), *BENCH]
    cases = [
        (["--output_json", str(tmp_path)], "is a folder"),
        (["--output_json", str(a_file / "out.json")], "is a file, not a folder"),
        (["--results_csv", "/proc/no-such-dir/out.csv"], "cannot write in /proc"),
        (["--output_json", str(tmp_path / "same"), "--results_csv", str(tmp_path / "same")], "name the same file"),
        (["--profile", str(tmp_path / "earlier.json"), "--output_json", str(tmp_path / "earlier.json")],
         "name the same file"),
    ]
    for flags, message in cases:
        refused(model + flags, capsys, message)


def test_a_failed_write_at_the_end_loses_nothing(tiny_llama, tmp_path, earlier, capsys, monkeypatch):
    """--output_json fails after the run: the CSV is still written, the record is printed."""
    def read_only_filesystem(path, obj):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(cli, "write_json", read_only_filesystem)
    table = tmp_path / "new.csv"
    line, out = refused(["--model", str(tiny_llama), *BENCH, "--output_json", str(tmp_path / "out.json"),
                         "--results_csv", str(table)], capsys, "Read-only file system", only_line=False)
    assert "the results are printed above" in line
    printed = json.loads(out[out.index("\n{") + 1:])  # after the table: the whole record
    assert printed["benchmark"]["tpot_p50_ms"] > 0
    assert [row["runner"] for row in csv.DictReader(table.open())] == ["pipeline"]
    assert not (tmp_path / "out.json").exists()


def test_csv_keeps_one_schema_and_files_get_usual_modes(tiny_llama, tmp_path, earlier, capsys):
    other = tmp_path / "earlier.csv"  # another tool's columns
    refused(["--model", str(tiny_llama), *BENCH, "--results_csv", str(other)], capsys, "columns are not this version's")
    old_umask = os.umask(0o022)
    try:
        table, record = tmp_path / "results.csv", tmp_path / "run.json"
        run_llm.main(["--model", str(tiny_llama), *BENCH, "--results_csv", str(table), "--output_json", str(record)])
        assert stat.S_IMODE(table.stat().st_mode) == 0o644 and stat.S_IMODE(record.stat().st_mode) == 0o644
        table.chmod(0o600)
        run_llm.main(["--model", str(tiny_llama), *BENCH, "--results_csv", str(table)])
        assert stat.S_IMODE(table.stat().st_mode) == 0o600  # an append keeps the file's mode
        assert len(list(csv.DictReader(table.open()))) == 2
    finally:
        os.umask(old_umask)


def broken_copies(tiny_llama, tmp_path):
    """{case: (folder, message)}: copies of the tiny model, each broken one way."""
    cases = {}

    def copy(name):
        folder = tmp_path / name
        shutil.copytree(tiny_llama, folder)
        return folder

    weights = copy("truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cases["truncated weights"] = (weights.parent, "model.safetensors is not a valid safetensors file")
    garbage = copy("garbage") / "model.safetensors"
    garbage.write_bytes(b"not safetensors" * 100)
    cases["garbage weights"] = (garbage.parent, "model.safetensors is not a valid safetensors file")
    config = copy("list-config") / "config.json"
    config.write_text("[1, 2]")
    cases["config not an object"] = (config.parent, "a JSON list, not an object")
    config = copy("bare-config") / "config.json"
    config.write_text('{"model_type": "llama"}')
    cases["config lacks fields"] = (config.parent, "no vocab_size, hidden_size, num_hidden_layers, num_attention_heads")
    config = copy("unknown-type") / "config.json"
    config.write_text('{"model_type": "no-such-type"}')
    cases["unknown model type"] = (config.parent, "unknown model_type 'no-such-type'")
    config = copy("binary-config") / "config.json"
    config.write_bytes(b"\xff\xfe\x00garbage")
    cases["config not text"] = (config.parent, "not a valid model config")
    return cases


def test_broken_model_files_are_diagnosed(tiny_llama, tmp_path, earlier, capsys):
    for case, (folder, message) in broken_copies(tiny_llama, tmp_path).items():
        line, _ = refused(["--model", str(folder), *BENCH], capsys, message, only_line=False)
        assert str(folder) in line, (case, line)


def test_tokenizers_and_prompts_that_do_not_fit(tiny_llama, capsys):
    qwen_tokenizer = models.offline_tokenizer_dir(tiny_config("qwen2"))
    assert qwen_tokenizer is not None
    cases = [
        (["--tokenizer", str(qwen_tokenizer), "--prompt", "Hello there"], "but the model's vocabulary has 512"),
        (["--prompt", b"caf\xe9".decode("utf-8", "surrogateescape")], "--prompt is not valid UTF-8 text"),
        (["--prompt", "   "], "--prompt is empty"),
    ]
    for flags, message in cases:
        refused(["--model", str(tiny_llama), "--num_tokens", "2", *flags], capsys, message,
                only_line="vocabulary" not in message)
    # found out before the weights load: an 8B model in FP32 is never built for a prompt it cannot read
    with pytest.raises(SystemExit):
        run_llm.main(["--model", "meta-llama/Llama-3.1-8B-Instruct", "--random_weights", "--prompt", "Hi"])
    err = capsys.readouterr().err
    assert "error: no tokenizer for meta-llama/Llama-3.1-8B-Instruct" in err and "[tllm] loading" not in err


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """The default model's cache in a fresh folder, with the GGUF conversion replaced by a copy
    of an already converted folder (the real one takes 20-40 s)."""
    converted = models.smollm2_dir()
    calls = []

    def convert(gguf, folder):
        calls.append(folder)
        shutil.copytree(converted, folder, ignore=shutil.ignore_patterns(models.CONVERTED))

    monkeypatch.setattr(models, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(models, "convert_gguf", convert)
    return tmp_path / "cache", calls


def test_the_converted_default_model_heals(cache_dir, capsys, monkeypatch):
    cache, calls = cache_dir
    target = models.smollm2_dir()
    assert len(calls) == 1 and models._conversion_problem(target) is None
    assert models.smollm2_dir() == target and len(calls) == 1  # checked, not converted again
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    models.smollm2_dir()
    assert len(calls) == 2 and models._conversion_problem(target) is None
    assert "model.safetensors is missing or not the size that was written" in capsys.readouterr().err
    (target / models.CONVERTED).unlink()  # a conversion that never finished
    models.smollm2_dir()
    assert len(calls) == 3 and models._conversion_problem(target) is None


def test_an_interrupted_conversion_leaves_nothing(cache_dir, monkeypatch):
    cache, calls = cache_dir

    def interrupted(gguf, folder):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.smollm2_dir()
    assert list(cache.iterdir()) == []
    abandoned = cache / "SmolLM2-135M-Instruct.tmp999999999"  # a killed process's folder
    abandoned.mkdir()
    monkeypatch.setattr(models, "convert_gguf", lambda gguf, folder: calls.append(folder) or folder.mkdir())
    models.smollm2_dir()
    assert not abandoned.exists()


def test_default_model_errors_name_the_default_model(cache_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, "CACHE_DIR", tmp_path / "proc-like")
    (tmp_path / "proc-like").write_text("a file where the cache folder should be")
    line, _ = refused([], capsys, "the bundled default model is converted into")
    assert "--model" not in line and "TLLM_CACHE" in line
    folder = tmp_path / "default"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_config("llama").to_dict()))
    (folder / "model.safetensors").write_bytes(b"broken")
    monkeypatch.setattr(models, "smollm2_dir", lambda: folder)
    line, _ = refused(BENCH, capsys, "the bundled default model (", only_line=False)
    assert "--model" not in line and "model.safetensors is not a valid safetensors file" in line


FLAG_CASES = {
    "--isl without --benchmark": (["--isl", "64"], "--isl has no effect without --benchmark"),
    "several without --benchmark": (["--iterations", "3", "--enable_pytorch_run"],
                                     "--iterations, --enable_pytorch_run have no effect without --benchmark"),
    "--results_csv without --benchmark": (["--results_csv", "x.csv"], "--results_csv has no effect"),
    "--profile without --benchmark": (["--profile", "trace.json"], "--profile has no effect"),
    "--prompt with --benchmark": ([*BENCH, "--prompt", "hi"], "--prompt has no effect with --benchmark"),
    "--ignore_eos with --benchmark": ([*BENCH, "--ignore_eos"], "--ignore_eos has no effect with --benchmark"),
    "--baseline without --enable_pytorch_run": ([*BENCH, "--baseline", "all"], "--baseline has no effect"),
    "one token benchmark": (["--benchmark", "--num_tokens", "1"], "--benchmark needs --num_tokens >= 2"),
    "empty prompt": (["--prompt", ""], "--prompt is empty"),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_flags_without_effect_are_refused(case, tiny_llama, tmp_path, earlier, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags, message = FLAG_CASES[case]
    refused(["--model", str(tiny_llama), *flags], capsys, message)


def test_a_profile_trace_that_was_not_written_is_an_error(tiny_llama, tmp_path, earlier, capsys, monkeypatch):
    """The run's other outputs are still written; the missing trace ends the run with exit 2."""
    monkeypatch.setattr(torch.profiler.profile, "export_chrome_trace", lambda self, path: None)
    record = tmp_path / "run.json"
    line, _ = refused(["--model", str(tiny_llama), *BENCH, "--profile", str(tmp_path / "trace.json"),
                       "--output_json", str(record)], capsys, "the trace was not written", only_line=False)
    assert line.startswith(f"error: --profile {tmp_path / 'trace.json'}")
    assert json.loads(record.read_text())["benchmark"]["profile_error"] in line


def test_a_model_that_cannot_fit_is_refused_before_loading(tiny_llama, earlier, capsys, monkeypatch):
    monkeypatch.setattr(models, "free_memory", lambda device: 2e9)
    refused(["--model", "meta-llama/Llama-3.1-8B-Instruct", "--random_weights", *BENCH], capsys,
            "its 8.03B parameters need 32.1 GB in float32, but 2.0 GB of host memory is free", only_line=False)
    refused(["--model", "Qwen/Qwen2.5-7B-Instruct", "--random_weights", "--precision", "BF16", *BENCH], capsys,
            "need 15.2 GB in bfloat16", only_line=False)
    monkeypatch.setattr(models, "free_memory", lambda device: 1e4)
    refused(["--model", str(tiny_llama), *BENCH], capsys, "of host memory is free", only_line=False)
