"""Small shared helpers for the command-line tools: user errors, progress lines, precision and
device choice, version stamps (result files: ``files.py``)."""

import os
import platform
import sys
import time

import torch
import transformers

PRECISIONS = {"FP32": torch.float32, "FP16": torch.float16, "BF16": torch.bfloat16}


class UserError(Exception):
    """Bad input or environment: reported as one line, exit status 2, no traceback."""


def leader():
    """Whether this process speaks: the only one, or rank 0 of a torchrun launch (the others
    run the same steps; tensor_parallel.py)."""
    return int(os.environ.get("RANK", 0)) == 0


def log(message):
    if leader():
        print(f"[tllm] {message}", file=sys.stderr, flush=True)


def process_age():
    """Seconds since this process started, or None where the system does not say (Linux does:
    the start time in /proc, in clock ticks since boot)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def resolve_device(requested):
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as e:
        raise UserError(f"--device {requested}: not a device name (cpu, cuda, cuda:N)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: no CUDA GPU is available here (torch {torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {requested}: only cpu and cuda are supported")
    return device


def resolve_dtype(precision, device, model_type):
    """The compute dtype for a --precision value, with a one-line note where it is not literal."""
    dtype = PRECISIONS[precision]
    if dtype == torch.float16 and model_type.startswith("gemma3"):
        log("note: Gemma 3 overflows in FP16 (its activations exceed 65504); prefer --precision BF16")
    if device.type == "cpu" and dtype == torch.float16:
        # Many CPU kernels have no fast FP16 path; BF16 has the same storage size and the range of FP32.
        log("note: FP16 on CPU runs slowly in PyTorch; results are FP16 but consider BF16 or FP32 on CPU")
    return dtype


def versions():
    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    try:
        import torch_tensorrt

        found["torch_tensorrt"] = torch_tensorrt.__version__
    except Exception:  # absent or unloadable (no TensorRT libraries): not part of this run
        pass
    if torch.cuda.is_available():
        found["cuda"] = torch.version.cuda
        found["gpu"] = torch.cuda.get_device_name()
    return found
