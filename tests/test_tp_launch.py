"""Launching a sharded run: two torchrun "nodes" on one host give one process's tokens; bad
launches and failing or killed ranks end the whole run promptly with one line from rank 0."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_tensor_parallel import env, free_port, torchrun_command

import config
import run_llm
import tensor_parallel
from tiny import tiny_config
from utils import UserError

RUN = ["--max_len", "64", "--num_tokens", "12", "--ignore_eos", "--no_build_cache"]
BENCH = ["--benchmark", "--isl", "16", "--num_tokens", "8", "--no_build_cache"]
ROOT = Path(__file__).resolve().parent.parent


def our_errors(stderr):
    """Our processes' one-line errors (torchrun adds its own report after them)."""
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_tp_outside_torchrun_says_how_to_launch(tiny_llama_dir, capsys):
    with pytest.raises(SystemExit) as exit:
        run_llm.main(["--model", str(tiny_llama_dir), "--tp", "2", "--benchmark", "--isl", "8"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --tp 2 runs one process per GPU: launch it with torchrun --nproc_per_node 2 run_llm.py ... --tp 2")


def test_heads_that_do_not_split_are_refused():
    with pytest.raises(UserError, match="--tp 3 does not divide the model's 4 attention heads"):
        tensor_parallel.check(tiny_config("llama"), 3)
    with pytest.raises(UserError, match="4 K/V heads can be neither split nor replicated over 6"):
        tensor_parallel.check(tiny_config("llama", num_attention_heads=12, num_key_value_heads=4, hidden_size=96,
                                          intermediate_size=192), 6)
    tensor_parallel.check(tiny_config("llama"), 4)  # 2 K/V heads, each on two of the four ranks


def test_a_world_size_other_than_tp_is_one_line(tiny_llama_dir, monkeypatch, capsys):
    # As torchrun's rank 0 of two sees it (the check comes before the group starts)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for flags, line in ((["--tp", "3"], "--tp 3, but torchrun started 2 processes: they must be equal"),
                        ([], "torchrun started 2 processes: pass --tp 2 to shard the model over them")):
        with pytest.raises(SystemExit) as exit:
            run_llm.main(["--model", str(tiny_llama_dir), *flags, *RUN])
        assert exit.value.code == 2
        assert capsys.readouterr().err.strip() == f"error: {line}"


def test_a_rank_that_fails_ends_every_rank_with_its_reason(tiny_llama_dir):
    # Rank 1 alone fails while rank 0 goes on to wait for it in a collective.
    start = time.monotonic()
    done = subprocess.run(torchrun_command(2, "tests/tp_fail_rank.py", "--model", str(tiny_llama_dir), "--tp", "2",
                                           *BENCH, "--iterations", "1000"),
                          capture_output=True, text=True, timeout=120, env=env(FAIL_RANK="1"), cwd=ROOT)
    assert done.returncode != 0
    assert our_errors(done.stderr) == ["error: rank 1: could not load its weights (injected)"], done.stderr[-2000:]
    assert time.monotonic() - start < 60


def test_a_killed_rank_ends_the_run(tiny_llama_dir):
    mark = f"tp-kill-{os.getpid()}"
    run = subprocess.Popen(torchrun_command(2, "run_llm.py", "--model", str(tiny_llama_dir), "--tp", "2", *BENCH,
                                            "--iterations", "100000"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(TLLM_TEST_MARK=mark),
                           cwd=ROOT)
    try:
        for line in run.stderr:  # rank 0 logs; wait until both ranks decode
            if "compiled" in line:
                break
        time.sleep(1)
        os.kill(rank_pid(mark, 1), signal.SIGKILL)
        killed = time.monotonic()
        stderr = run.stderr.read()
        assert run.wait(timeout=60) != 0
        assert time.monotonic() - killed < 30
    finally:
        run.kill()
    # Rank 0 sees its collective fail, or torchrun stops it first: one line either way.
    errors = our_errors(stderr)
    assert len(errors) == 1 and "another rank" in errors[0], stderr[-2000:]
    assert "[rank0]" not in stderr  # no traceback from rank 0 (torchrun's own report follows)


def rank_pid(mark, rank):
    """The process of ``rank`` among those whose environment holds TLLM_TEST_MARK=``mark``."""
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"TLLM_TEST_MARK={mark}".encode() in environ and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    raise AssertionError(f"no rank {rank} process")


def test_two_nodes_on_one_host_give_the_tokens_of_one_process(tiny_chat_dir, tmp_path):
    # Two torchrun agents, as on two hosts: --nnodes 2, a node rank each, one rendezvous endpoint.
    args = ["--model", str(tiny_chat_dir), "--prompt", "Hello there", "--tp", "2", *RUN]
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(torchrun_command(1, "run_llm.py", *args, "--output_json", str(tmp_path / f"{rank}.json"),
                                               launch=("--nnodes", "2", "--node_rank", str(rank),
                                                       "--rdzv_endpoint", endpoint)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
             for rank in range(2)]
    for node in nodes:
        _, stderr = node.communicate(timeout=300)
        assert node.returncode == 0, stderr[-3000:]
    sharded = json.loads((tmp_path / "0.json").read_text())
    assert not (tmp_path / "1.json").exists()  # rank 0 alone writes
    run_llm.main([*[a for a in args if a not in ("--tp", "2")], "--output_json", str(tmp_path / "one.json")])
    alone = json.loads((tmp_path / "one.json").read_text())
    assert sharded["tp"] == 2 and alone["tp"] == 1
    assert sharded["generated_token_ids"] == alone["generated_token_ids"]
    assert len(alone["generated_token_ids"][0]) == 12


@pytest.mark.parametrize("fields,refused", [
    (dict(benchmark=True, enable_pytorch_run=True), "--enable_pytorch_run"),
    (dict(interactive=True), "--interactive"),
    (dict(prequantized="fp8"), "a pre-quantized checkpoint"),
])
def test_what_a_sharded_run_cannot_do_is_one_line(fields, refused):
    with pytest.raises(UserError, match=f"--tp > 1: not with {refused}"):
        config.resolve("llama", device="cpu", tp=2, **fields)
