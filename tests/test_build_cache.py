"""The build cache (build_cache.py): a build saved then loaded gives the same tokens and logits
in every cache mode (eager and Inductor) and through both CLIs; a changed key rebuilds; a
truncated, corrupt or incompatible entry is removed and rebuilt; two builders of one entry
leave one whole entry; the list/clear command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import build_cache
import run_llm
import run_vlm
from export_llm import LastLogits
from generate import prefill
from pipeline import build_generator
from tiny import CACHE_MODES, CPU, run_config, tiny_pair
from tiny_vlm import tiny_qwen_config

ROOT = Path(__file__).resolve().parent.parent
PROMPT, DECODE = 12, 10
IDENTITY = {"test": "tiny llama, seed 0"}


def build(cache="static_v2", backend="eager", identity=IDENTITY, dtype=torch.float32, layers=2, device=CPU,
          **fields):
    """A fresh tiny Llama (the same weights each time) built through the cache: ((generator,
    timings, what the cache did), the prompt)."""
    model, _ = tiny_pair("llama", dtype, device, num_hidden_layers=layers)
    config = run_config(model, device, cache=cache, backend=backend, **fields)
    make = run_llm.text_inputs(1, model.config.vocab_size, device)
    torch.manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT), device=device)
    return build_generator(LastLogits(model), make, (1, 1), config, PROMPT + DECODE, (prompt, None), identity), prompt


def outputs(gen, prompt):
    """The prefill's logits, then greedy tokens and each decode step's logits."""
    gen.reset()
    logits, token = prefill(gen, prompt)
    steps = [logits]
    tokens = [token]
    for _ in range(DECODE - 1):
        logits, token = gen.step(token[:, None])
        steps.append(logits)
        tokens.append(token)
    return torch.stack(steps), torch.stack(tokens)


@pytest.mark.parametrize("cache", CACHE_MODES)
def test_build_then_load_gives_the_same_logits(cache):
    (gen, timings, cached), prompt = build(cache)
    assert cached["status"] == "built" and "export_s" in timings
    entry = build_cache.root() / cached["key"]
    assert (entry / "manifest.json").exists() and (entry / "graphs.pkl").exists()
    built = outputs(gen, prompt)

    (gen, timings, cached), _ = build(cache)
    assert cached["status"] == "loaded" and "export_s" not in timings and "cache_load_s" in timings
    loaded = outputs(gen, prompt)
    assert torch.equal(built[1], loaded[1])
    torch.testing.assert_close(built[0], loaded[0], rtol=0, atol=0)


def check_inductor_load(tmp_path, monkeypatch, atol=0.0, **build_fields):
    """The entry carries Inductor's artifacts: with Inductor's own cache folder emptied (a new
    machine, a cleared /tmp), the loaded build finds every compiled graph in them, and gives
    the same tokens and logits (within ``atol``)."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-1"))
    (gen, _, cached), prompt = build(backend="inductor", **build_fields)
    entry = build_cache.root() / cached["key"]
    assert (entry / "inductor.bin").stat().st_size > 0
    built = outputs(gen, prompt)

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-2"))
    torch._dynamo.reset()
    counters.clear()
    (gen, _, cached), _ = build(backend="inductor", **build_fields)
    assert cached["status"] == "loaded"
    loaded = outputs(gen, prompt)
    assert counters["inductor"]["fxgraph_cache_hit"] >= 1 and counters["inductor"]["fxgraph_cache_miss"] == 0
    assert torch.equal(built[1], loaded[1])
    torch.testing.assert_close(built[0], loaded[0], rtol=0, atol=atol)


def test_inductor_build_loads_its_compiled_artifacts(tmp_path, monkeypatch):
    check_inductor_load(tmp_path, monkeypatch, layers=1)  # (one layer: less C++ to compile on the CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_cudagraph_build_by_layer_loads(tmp_path, monkeypatch):
    """On a GPU, the fast path: BF16, Inductor by layer (four layers share their pieces), our
    Triton kernels, CUDA-graph decode. The split-K kernels add their partial sums in whatever
    order the blocks finish, so logits may differ in the last bit of FP32 (1.2e-7 seen)."""
    check_inductor_load(tmp_path, monkeypatch, atol=1e-5, layers=4, dtype=torch.bfloat16, device=torch.device("cuda"),
                        cudagraph=True)


def test_a_changed_key_builds_anew():
    (_, _, first), _ = build()
    for change in ({"cache": "static_v1"}, {"dtype": torch.bfloat16}, {"identity": {"test": "other weights"}},
                   {"decode_attention": "sdpa", "prefill_chunk": 4}):
        (_, _, other), _ = build(**change)
        assert other["status"] == "built" and other["key"] != first["key"], change
    assert len(build_cache.entries()) == 5


def test_model_identity_follows_the_files(tiny_llama_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    before = build_cache.model_identity(str(folder), False, None)
    assert before == build_cache.model_identity(str(folder), False, None)
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    assert build_cache.model_identity(str(folder), False, None) != before


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "other_format", "no_manifest", "unloadable"])
def test_a_damaged_entry_is_removed_and_rebuilt(damage, capsys):
    (_, _, cached), _ = build()
    entry = build_cache.root() / cached["key"]
    graphs = entry / "graphs.pkl"
    manifest = json.loads((entry / "manifest.json").read_text())
    if damage == "truncated":
        graphs.write_bytes(graphs.read_bytes()[:100])
    elif damage == "corrupt":
        data = bytearray(graphs.read_bytes())
        data[len(data) // 2] ^= 0xFF
        graphs.write_bytes(bytes(data))
    elif damage == "other_format":
        (entry / "manifest.json").write_text(json.dumps({**manifest, "format": 0}))
    elif damage == "no_manifest":
        (entry / "manifest.json").unlink()
    else:  # whole and checksummed, but not a pickle: what a future format change would look like
        graphs.write_bytes(b"not a pickle")
        manifest["files"]["graphs.pkl"] = [12, build_cache._sha256(graphs)]
        (entry / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    (_, _, again), _ = build()
    notes = [line for line in capsys.readouterr().err.splitlines() if "removing entry" in line]
    assert len(notes) == 1 and again["status"] == "built"
    assert build_cache._check(entry)[1] is None  # a whole entry again
    (_, _, third), _ = build()
    assert third["status"] == "loaded"


def test_two_builders_of_one_entry_leave_one_whole_entry():
    """Two processes that find no entry both build it; each publishes with one rename of its
    own staging folder, so the second finds the first's entry in place and drops its own."""
    model, _ = tiny_pair("llama")
    config = run_config(model, CPU)
    module = LastLogits(model)
    first = build_cache._open(config, "language model", 32, module, IDENTITY)
    second = build_cache._open(config, "language model", 32, module, IDENTITY)
    assert first.status == second.status == "built" and first.stage != second.stage
    from pipeline import export_and_rewrite

    graphs = export_and_rewrite(module, run_llm.text_inputs(1, 512, CPU)(2), (1, 1), config, 32)
    for build_ in (first, second):
        build_.keep(graphs)
    build_cache._finish(first)
    build_cache._finish(second)
    found = build_cache.entries()
    assert [entry.name for entry, _, _ in found] == [first.key]
    assert build_cache._check(found[0][0])[1] is None
    assert not [p for p in build_cache.root().iterdir() if p.name.startswith(".")]  # no staging left


def test_two_processes_building_at_once(tiny_llama_dir, tmp_path):
    """The same, with two real processes started together on one key: both finish, and one
    whole entry is left, which a third run loads."""
    args = [sys.executable, str(ROOT / "run_llm.py"), "--model", str(tiny_llama_dir), "--device", "cpu",
            "--benchmark", "--isl", "8", "--num_tokens", "4", "--iterations", "1"]
    runs = [subprocess.Popen([*args, "--output_json", str(tmp_path / f"{i}.json")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read()
    statuses = sorted(json.loads((tmp_path / f"{i}.json").read_text())["build_cache"]["status"] for i in range(2))
    assert statuses in (["built", "built"], ["built", "loaded"])
    found = build_cache.entries()
    assert len(found) == 1 and build_cache._check(found[0][0])[1] is None
    assert not [p for p in build_cache.root().iterdir() if p.name.startswith(".")]
    run_llm.main([*args[2:], "--output_json", str(tmp_path / "third.json")])
    assert json.loads((tmp_path / "third.json").read_text())["build_cache"]["status"] == "loaded"


def test_a_failed_build_leaves_nothing(monkeypatch):
    import pipeline

    def fail(*args):
        raise RuntimeError("export failed")

    monkeypatch.setattr(pipeline, "export_and_rewrite", fail)
    with pytest.raises(RuntimeError, match="export failed"):
        build()
    assert not list(build_cache.root().iterdir())


def test_an_unwritable_build_cache_is_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TLLM_BUILD_CACHE", str(blocker / "builds"))
    (gen, _, cached), prompt = build()
    assert cached == {"status": "off"} and "build cache: off for this run" in capsys.readouterr().err
    assert outputs(gen, prompt)[1].shape == (DECODE, 1)


def test_no_build_cache_neither_loads_nor_saves():
    (_, _, cached), _ = build(build_cache=False)
    assert cached == {"status": "off"} and not build_cache.entries()


def test_list_and_clear(capsys):
    build()
    build(cache="dynamic")
    assert build_cache.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "2 entries" in out and "cache=static_v2" in out and "cache=dynamic" in out
    key = build_cache.entries()[0][0].name
    manifest = json.loads((build_cache.root() / key / "manifest.json").read_text())
    manifest["fields"]["toolkit"] = "an older toolkit"
    (build_cache.root() / key / "manifest.json").write_text(json.dumps(manifest))
    assert build_cache.main(["list"]) == 0 and capsys.readouterr().out.count("(stale") == 1
    assert build_cache.main(["clear", "--stale"]) == 0
    assert len(build_cache.entries()) == 1
    build()
    build(cache="dynamic")  # both entries again, whichever was stale
    key = build_cache.entries()[0][0].name
    assert build_cache.main(["clear", key[:8]]) == 0
    assert len(build_cache.entries()) == 1
    assert build_cache.main(["clear"]) == 0 and not build_cache.entries()
    with pytest.raises(build_cache.UserError, match="no cache entry starts with ffff"):
        build_cache.main(["clear", "ffff"])


def test_run_llm_second_run_loads(tmp_path, capsys):
    """The bundled model through the CLI: built, then loaded, with the same answer; a prompt of
    about the same length shares the build (the cache length is rounded up)."""
    records = []
    for i, prompt in enumerate(["What is the capital of France?", "What is the capital of France?",
                                "What is the capital of Italy, please?"]):
        out = tmp_path / f"run{i}.json"
        run_llm.main(["--prompt", prompt, "--num_tokens", "12", "--output_json", str(out)])
        records.append(json.loads(out.read_text()))
    capsys.readouterr()
    assert [r["build_cache"]["status"] for r in records] == ["built", "loaded", "loaded"]
    assert records[0]["generated_token_ids"] == records[1]["generated_token_ids"]
    assert "Paris" in records[1]["generated_text"][0]
    assert records[2]["generated_token_ids"] != records[0]["generated_token_ids"]
    assert len(build_cache.entries()) == 1


def test_run_vlm_second_run_loads(tmp_path, capsys):
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_qwen_config()))
    records = []
    for i in range(2):
        out = tmp_path / f"run{i}.json"
        run_vlm.main(["--device", "cpu", "--model", str(folder), "--random_weights", "--num_tokens", "8",
                      "--vision", "compile", "--output_json", str(out)])
        records.append(json.loads(out.read_text()))
    err = capsys.readouterr().err
    assert [r["build_cache"]["status"] for r in records] == ["built", "loaded"]
    assert "build cache: loaded vision encoder" in err
    assert records[0]["generated_token_ids"] == records[1]["generated_token_ids"]
    assert len(build_cache.entries()) == 2  # the language model and the vision encoder
