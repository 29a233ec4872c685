"""Result files: written whole or not at all, appended under a lock by processes that share
them, and checked for writability before the work that fills them. Imports nothing heavy, so
sweep tools start fast."""

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path


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
