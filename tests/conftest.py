import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Without a CUDA GPU, our Triton kernels run under Triton's CPU interpreter. triton.jit reads
# TRITON_INTERPRET when it decorates a kernel (Triton 3.6: runtime/jit.py, knobs.runtime.interpret),
# that is when decode_attention or gated_down is first imported, so it is set here, before any test
# module is collected. With a GPU it stays unset: the GPU tests run the compiled kernels (and
# torch.cuda.is_available() only counts devices; it creates no CUDA context).
if importlib.util.find_spec("triton") is not None and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# Under pytest-xdist each worker takes one core: two workers of two threads each on the CI
# machine's two cores ran a CPU decode step up to 8x slower than one thread each.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def build_cache_dir(tmp_path, monkeypatch):
    """Each test its own build cache (also for the processes it starts): no test loads another's
    builds, and none touches the user's."""
    folder = tmp_path / "builds"
    monkeypatch.setenv("TLLM_BUILD_CACHE", str(folder))
    return folder


@pytest.fixture
def triton_device(monkeypatch):
    """Where a Triton kernel test runs: on the GPU, compiled, or without one on the CPU under the
    interpreter. Skips where triton is not installed."""
    pytest.importorskip("triton", reason="the kernels are written in Triton (comes with CUDA builds of torch)")
    if os.environ.get("TRITON_INTERPRET") != "1":
        return torch.device("cuda")
    import triton.runtime.interpreter as interpreter

    # Triton 3.6's interpreter holds a scalar as a one-element array, which numpy 2.4 no longer
    # turns into an int: a loop bounded by a loaded value (the new token's position) needs this.
    patch_tensor = interpreter._patch_lang_tensor

    def _patch_lang_tensor(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", _patch_lang_tensor)
    return torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A saved tiny Llama (weights, no tokenizer), as a local folder a user would pass."""
    import transformers

    from tiny import tiny_config

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(tiny_config("llama")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory):
    """A saved tiny random Llama with the bundled SmolLM2 tokenizer and chat template in its
    folder (vocabulary 49152, untied embeddings so random logits are not near-tied): the CLI
    runs as with a real model, in a second of export instead of ten."""
    import transformers

    import models
    from tiny import tiny_config

    folder = tmp_path_factory.mktemp("tiny-chat")
    torch.manual_seed(0)
    config = tiny_config("llama", vocab_size=49152, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(models.smollm2_dir()).save_pretrained(folder)
    return folder
