"""The logits a tiny saved model gives through run_llm.py's build, teacher-forced over a prompt
and decode steps: in the test process (one rank) or, run as a script under torchrun, on each of
its ranks, rank 0 saving them (test_tensor_parallel.py compares the two).

    torchrun --nproc_per_node 2 tests/tp_worker.py CASES.json OUT.pt
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import config  # noqa: E402
import run_llm  # noqa: E402
import tensor_parallel  # noqa: E402
from generate import prefill  # noqa: E402

PROMPT, DECODE = 24, 20


def sequence(vocab_size):
    return torch.randint(0, vocab_size, (1, PROMPT + DECODE), generator=torch.Generator().manual_seed(1))


def teacher_forced(folder, model_type, cache, tp=1, **fields):
    """[prefill logits, then one per decode step] for the saved model in ``folder``; ``fields``:
    RunConfig fields other than the CPU's FP32 eager defaults."""
    fields = dict(dict(device="cpu", precision="FP32", backend="eager"), **fields)
    run = config.resolve(model_type, cache=cache, model=str(folder), benchmark=True, isl=PROMPT, num_tokens=DECODE,
                         build_cache=False, tp=tp, **fields)
    built = run_llm.build(run)
    ids = sequence(built.model.config.vocab_size).to(run.torch_device)
    with torch.no_grad():
        steps = [prefill(built.gen, ids[:, :PROMPT])]
        steps += [built.gen.step(ids[:, j:j + 1]) for j in range(PROMPT, PROMPT + DECODE)]
    for logits, token in steps:
        assert torch.equal(token, logits.argmax(-1))
    return torch.stack([logits for logits, _ in steps])


def main(cases_file, out):
    """Each case of the JSON list ``[folder, model_type, cache, {RunConfig fields}]`` on this
    launch's ranks; rank 0 saves {"folder|cache": logits}."""
    cases = json.loads(Path(cases_file).read_text())
    device = torch.device(cases[0][3].get("device", "cpu"))
    tensor_parallel.setup(int(os.environ["WORLD_SIZE"]), device, __file__)
    results = {f"{folder}|{cache}": teacher_forced(folder, model_type, cache, tensor_parallel.world(), **fields).cpu()
               for folder, model_type, cache, fields in cases}
    if tensor_parallel.rank() == 0:
        torch.save(results, out)
    tensor_parallel.finish()


if __name__ == "__main__":
    main(*sys.argv[1:])
