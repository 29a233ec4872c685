"""Tensor parallelism on CPU with gloo: ranks started by torchrun give the logits of one process
within 1e-5 (FP32) on a tiny model of every text family and in every cache mode; the launch and
flag errors end in one line; a failing rank ends the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import tp_worker
import transformers

from tiny import FAMILIES, tiny_config

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# Every family in the default cache mode, and every cache mode on Llama.
CASES = [(family, "static_v2") for family in FAMILIES] + [("llama", cache) for cache in ("static_v1", "dynamic", "")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny model of each family: {family: (folder, model_type)}."""
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(f"tp-{family}")
        torch.manual_seed(0)
        config = tiny_config(family)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        out[family] = (str(folder), config.model_type)
    return out


def torchrun_command(nproc, script, *args, launch=()):
    """torchrun of ``script`` (relative to the repository) on ``nproc`` local ranks; ``launch``:
    its rendezvous flags (default: a free local port)."""
    return [*TORCHRUN, "--nproc_per_node", str(nproc), *(launch or ("--master_port", str(free_port()))),
            str(ROOT / script), *args]


def env(**extra):
    """The ranks' environment: one thread each (the CI machine has two cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ranks_logits(tmp_path, nproc, cases):
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    out = tmp_path / "logits.pt"
    done = subprocess.run(torchrun_command(nproc, "tests/tp_worker.py", str(spec), str(out)), capture_output=True,
                          text=True, timeout=600, env=env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


@pytest.mark.parametrize("nproc", [2, 4])
def test_ranks_give_the_logits_of_one_process(saved, tmp_path, nproc):
    # Four ranks hold 4 query heads and 2 K/V heads as one and a half: each K/V head on two ranks
    cases = CASES if nproc == 2 else [("llama", "static_v2"), ("gpt2", "static_v2")]
    specs = [(*saved[family], cache, {}) for family, cache in cases]
    sharded = ranks_logits(tmp_path, nproc, specs)
    for folder, model_type, cache, _ in specs:
        alone = tp_worker.teacher_forced(folder, model_type, cache)
        got = sharded[f"{folder}|{cache}"]
        assert got.shape == alone.shape == (1 + tp_worker.DECODE, 1, alone.shape[-1])
        assert (got - alone).abs().max().item() < 1e-5, (model_type, cache)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL)")
@pytest.mark.parametrize("nproc", [1, 2])
def test_ranks_on_gpus_give_the_logits_of_one_gpu(saved, tmp_path, nproc):
    # BF16, Inductor, CUDA graphs: NCCL runs inside the captured decode step. One rank: the
    # collectives are in the graph over a group of one.
    if torch.cuda.device_count() < nproc:
        pytest.skip(f"needs {nproc} GPUs")
    fields = dict(device="cuda", precision="BF16", backend="inductor", cudagraph=True, tune="none")
    specs = [(*saved[family], "static_v2", fields) for family in ("llama", "gemma3")]
    sharded = ranks_logits(tmp_path, nproc, specs)
    for folder, model_type, cache, _ in specs:
        alone = tp_worker.teacher_forced(folder, model_type, cache, **fields).cpu()
        got = sharded[f"{folder}|{cache}"]
        scale = alone.abs().max().item()
        assert (got - alone).abs().max().item() < 0.02 * scale, model_type
