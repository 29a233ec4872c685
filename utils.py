"""Small shared helpers for the command-line tools: user errors, progress lines, precision and
device choice, atomic and locked result files, version stamps."""

import contextlib
import fcntl
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch
import transformers

PRECISIONS = {"FP32": torch.float32, "FP16": torch.float16, "BF16": torch.bfloat16}


class UserError(Exception):
    """Bad input or environment: reported as one line, exit status 2, no traceback."""


def log(message):
    print(f"[tllm] {message}", file=sys.stderr, flush=True)


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


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive lock for ``path`` (on a hidden file beside it) while the block runs, so
    processes that append to one results file at once (a sweep over several GPUs) lose no rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_atomic(path, text):
    """Write a whole file or nothing: a temp file beside it, renamed over it at the end. The
    file keeps its mode, or a new one gets the usual mode under the umask (mkstemp's is 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_problem(path):
    """Why a whole file cannot be written at ``path`` (a phrase), or None."""
    path = Path(path)
    if path.is_dir():
        return "is a folder"
    return folder_problem(path.parent)


def folder_problem(folder):
    """Why files cannot be written in ``folder``, made if missing (a phrase), or None. Asks the
    filesystem with a probe: mode bits say nothing for root or on a read-only mount."""
    existing = Path(folder)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".tllm-probe-"))
    except OSError as e:
        return f"cannot write in {existing} ({e.strerror or e})"
    return None


def write_json(path, obj):
    write_atomic(path, json.dumps(obj, indent=2) + "\n")
