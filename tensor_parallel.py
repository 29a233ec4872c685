"""Tensor parallelism on torch.distributed, for runs that torchrun launches: the process group,
which slice of each language-model weight this rank holds, and the collectives that join the
slices' results. The collectives are PyTorch's functional ones, called from forward hooks, so
torch.export records them in the graph and every rank runs the same passes, compiler and CUDA
graphs as one GPU does.

Sharding (Megatron's layout): q/k/v and gate/up by output columns (by head for q/k/v; with fewer
K/V heads than ranks each K/V head is replicated on the ranks whose query heads use it), o_proj
and down by input rows with one all-reduce each, the LM head by vocabulary rows with one
all-gather (padded to a multiple of the ranks). The embedding is replicated: a lookup reads one
row per token. Only rank 0 prints and writes; a rank that fails tells the others through the
launcher's store, and they all exit within a second with one line from rank 0.
"""

import datetime
import logging
import os
import select
import signal
import sys
import threading
import warnings

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import transformers
from torch import nn

from utils import UserError, leader

FAILED = "tllm/failed"  # the store key a failing rank writes: "<exit code>|<message>"
TIMEOUT_S = float(os.environ.get("TLLM_TP_TIMEOUT", 600))  # a collective that waits longer fails

_rank, _world = 0, 1
_failing = threading.Event()  # this process reports its own failure: the watcher stays quiet
_said = threading.Lock()  # held once a failure is printed: one line per run
_watcher = None


def launched():
    """Whether torchrun (or another launcher that sets its variables) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank():
    return _rank


def world():
    """Ranks sharing the model: 1 without --tp (or --tp 1 outside torchrun)."""
    return _world


def active():
    """Whether this run is sharded: torchrun launched it with --tp (1 too: the collectives are
    then in the graph, over one rank)."""
    return dist.is_initialized()


def quiet_followers():
    """On ranks other than 0: no stdout, no progress bars or library warnings (rank 0 has the
    same ones)."""
    if leader():
        return
    sys.stdout = open(os.devnull, "w")
    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def setup(tp, device, script):
    """Check --tp against the launch and start the process group: NCCL with one GPU per rank
    (the local rank's), gloo on CPU. Returns the device this rank runs on. Outside torchrun,
    --tp 1 (or none) is a plain run."""
    global _rank, _world, _watcher
    if not launched():
        if tp and tp > 1:
            raise UserError(f"--tp {tp} runs one process per GPU: launch it with "
                            f"torchrun --nproc_per_node {tp} {script} ... --tp {tp}")
        return device
    size = int(os.environ["WORLD_SIZE"])
    if tp is None and size > 1:
        raise UserError(f"torchrun started {size} processes: pass --tp {size} to shard the model over them")
    if tp is not None and tp != size:
        raise UserError(f"--tp {tp}, but torchrun started {size} processes: they must be equal")
    if tp is None:
        return device
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if device.index is not None and device.index != local:
            raise UserError("--device: under torchrun each rank uses the GPU of its local rank; pass --device cuda")
        if local >= torch.cuda.device_count():
            raise UserError(f"local rank {local} has no GPU: this host has {torch.cuda.device_count()} "
                            f"(--nproc_per_node must not exceed it)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=TIMEOUT_S),
                            device_id=device if device.type == "cuda" else None)
    _rank, _world = dist.get_rank(), dist.get_world_size()
    # torchrun stops a host's other ranks with SIGTERM when one exits with an error. The main
    # thread may be blocked in a collective, where no Python handler runs: the signal's byte
    # goes to a pipe the watcher thread reads.
    signals, wakeup = os.pipe()
    os.set_blocking(wakeup, False)
    signal.set_wakeup_fd(wakeup)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    _watcher = threading.Thread(target=_watch, args=(dist.distributed_c10d._get_default_store(), signals),
                                daemon=True)
    _watcher.start()
    return device


def _watch(store, signals):
    """Exit as soon as another rank reports a failure (this one may be waiting in a collective
    that would otherwise wait for the timeout) or torchrun stops this one; rank 0 says why."""
    while not _failing.is_set():
        ready, _, _ = select.select([signals], [], [], 0.2)
        stopped = bool(ready) and signal.SIGTERM in os.read(signals, 64)
        try:
            reported = store.get(FAILED).decode() if store.check([FAILED]) else None
        except Exception:  # the store went away: the launcher is ending the run
            reported = None
        if reported:
            code, message = reported.split("|", 1)
        elif stopped:
            code, message = 1, "stopped by torchrun: another rank exited (an error, a signal, out of memory) or Ctrl-C"
        else:
            continue
        if _failing.is_set() or not _said.acquire(blocking=False):
            return
        if _rank == 0:
            print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(int(code))


def fail(message, code):
    """Report this rank's failure: rank 0 prints it; another rank hands it to rank 0 through
    the store (a failure every rank has, such as a bad flag, is then printed once). Returns
    whether this process should print it itself."""
    if not dist.is_initialized():
        return leader()
    _stop_watching()
    try:
        dist.distributed_c10d._get_default_store().compare_set(FAILED, "", f"{code}|rank {_rank}: {message}")
    except Exception:  # the store is gone: the launcher reports the exit
        pass
    return leader() and _said.acquire(blocking=False)


def _stop_watching():
    """Stop the watcher before the store or the interpreter goes away: a thread still inside a
    store call at exit aborts the process."""
    _failing.set()
    if _watcher is not None and _watcher is not threading.current_thread():
        _watcher.join(timeout=2)


def collective_error(error):
    """Whether ``error`` is a collective's failure (a peer that vanished, a timeout)."""
    return active() and (isinstance(error, dist.DistError) or any(
        word in str(error) for word in ("gloo", "NCCL", "Connection reset", "Timed out")))


def finish():
    if dist.is_initialized():
        _stop_watching()
        dist.destroy_process_group()


def check(model_config, tp):
    """One UserError line where the model's heads or widths cannot be split over ``tp`` ranks."""
    if not tp or tp == 1:
        return
    text = model_config.get_text_config()
    q_heads, kv_heads, _ = attention_heads(text)
    widths = {"attention heads": q_heads, "MLP width": _mlp_width(text)}
    for what, value in widths.items():
        if value % tp:
            raise UserError(f"--tp {tp} does not divide the model's {value} {what}")
    if kv_heads % tp and tp % kv_heads:
        raise UserError(f"--tp {tp}: the model's {kv_heads} K/V heads can be neither split nor replicated "
                        f"over {tp} ranks (one must divide the other)")


def _mlp_width(text_config):
    return getattr(text_config, "intermediate_size", None) or getattr(text_config, "n_inner", None) \
        or 4 * text_config.hidden_size


def attention_heads(config):
    """(query heads, K/V heads, head size) of a text config."""
    q_heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or q_heads
    return q_heads, kv_heads, getattr(config, "head_dim", None) or config.hidden_size // q_heads


def local_kv_heads(kv_heads, size=None):
    """K/V heads one rank holds."""
    size = size or _world
    return kv_heads // size if kv_heads % size == 0 else 1


def _rows(first, count, width=1):
    """Rows of units ``first`` .. ``first + count - 1`` of ``width`` rows each (heads, or single
    MLP channels) in a projection's output."""
    return torch.arange(first * width, (first + count) * width)


def shard(model, device):
    """Replace, in place, each split weight of ``model``'s language model by this rank's slice
    on ``device`` (on the meta device, a meta slice) and hook the collectives. The source may be
    a model whose weights are memory-mapped on the host (only the slice is read) or on the meta
    device. Other weights stay where they are."""
    size, r = _world, _rank
    lm = model if hasattr(model, "get_decoder") else model.language_model  # (Eagle2's: a causal LM inside)
    text_config = lm.config.get_text_config()
    q_heads, kv_heads, head_dim = attention_heads(text_config)
    q_local, kv_local = q_heads // size, local_kv_heads(kv_heads, size)
    q_rows = _rows(r * q_local, q_local, head_dim)
    kv_first = r * kv_local if kv_heads % size == 0 else r // (size // kv_heads)
    kv_rows = _rows(kv_first, kv_local, head_dim)
    mlp_local = _mlp_width(text_config) // size
    mlp_rows = _rows(r * mlp_local, mlp_local)
    hidden = text_config.hidden_size
    target = device if not _is_meta(model) else torch.device("meta")
    for name, module in lm.get_decoder().named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "q_proj":
            _take(module, 0, q_rows, target)
        elif leaf in ("k_proj", "v_proj"):
            _take(module, 0, kv_rows, target)
        elif leaf in ("gate_proj", "up_proj"):
            _take(module, 0, mlp_rows, target)
        elif leaf == "o_proj":
            _take(module, 1, q_rows, target, reduce=True)
        elif leaf == "down_proj":
            _take(module, 1, mlp_rows, target, reduce=True)
        elif leaf == "c_attn":  # GPT-2: q, k and v in one Conv1D ([in, out] weights)
            _take(module, 1, torch.cat([q_rows + i * hidden for i in range(3)]), target)
        elif leaf == "c_fc":
            _take(module, 1, mlp_rows, target)
        elif leaf == "c_proj":
            rows = q_rows if name.endswith("attn.c_proj") else mlp_rows
            _take(module, 0, rows, target, reduce=True)
        if hasattr(module, "num_key_value_groups"):
            module.num_key_value_groups = q_local // kv_local
        if hasattr(module, "split_size"):  # GPT-2's attention: where c_attn's output splits into q, k, v
            module.split_size = q_local * head_dim
    _shard_head(lm, target)


def _is_meta(model):
    return next(model.parameters()).device.type == "meta"


def _take(module, dim, index, device, reduce=False):
    """Keep rows ``index`` of dim ``dim`` of the module's weight (and of its bias where that is
    split too). ``reduce``: the module's inputs are split, so each rank's output is a partial
    sum, all-reduced by a hook; its bias is added once, by rank 0 (zero elsewhere)."""
    out_dim = 1 if type(module).__name__ == "Conv1D" else 0  # Conv1D stores [in, out]
    for name in ("weight", "bias"):
        param = getattr(module, name, None)
        if param is None:
            continue
        if name == "bias" and reduce:
            value = param.detach().to(device) if _rank == 0 else torch.zeros_like(param, device=device)
        else:
            along = dim if name == "weight" else 0
            value = param.detach().index_select(along, index.to(param.device)).to(device)
        setattr(module, name, nn.Parameter(value, requires_grad=False))
    if hasattr(module, "nf"):  # Conv1D's output width
        module.nf = module.weight.shape[1]
    for attribute, shape_dim in (("out_features", out_dim), ("in_features", 1 - out_dim)):
        if hasattr(module, attribute):
            setattr(module, attribute, module.weight.shape[shape_dim])
    if reduce:
        module.register_forward_hook(_all_reduce)


def _all_reduce(module, args, output):
    return funcol.all_reduce(output, "sum", dist.group.WORLD)


def _shard_head(model, device):
    """The LM head by vocabulary rows, the last rank's share padded with zero rows, and an
    all-gather of the logits that drops the padding. Untied from the (replicated) embedding."""
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    share = -(-vocab // _world)
    rows = torch.arange(_rank * share, min((_rank + 1) * share, vocab))
    weight = head.weight.detach().index_select(0, rows.to(head.weight.device)).to(device)
    if len(rows) < share:
        weight = torch.cat([weight, weight.new_zeros(share - len(rows), weight.shape[1])])
    head.weight = nn.Parameter(weight, requires_grad=False)
    head.out_features = share

    def gather(module, args, output):
        return funcol.all_gather_tensor(output, output.dim() - 1, dist.group.WORLD)[..., :vocab]

    head.register_forward_hook(gather)
