"""How our Triton kernels are launched, shared by ``decode_attention`` and ``gated_down``:
with or without programmatic dependent launch, and the GPU facts the launch plans need."""

import functools

import torch
from torch.library import wrap_triton


@functools.cache
def num_sms(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def split_reduction(outputs, inner, num_sms, per_program, multiple, max_splits):
    """How a kernel of split-K programs divides a reduction of ``inner`` for ``outputs`` output
    rows, ``per_program`` rows a program: (length per split, a multiple of ``multiple``;
    splits), about two programs per SM and at most ``max_splits`` splits."""
    blocks = -(-outputs // per_program)
    wanted = min(max_splits, max(1, -(-2 * num_sms // blocks)))
    per_split = -(-(-(-inner // wanted)) // multiple) * multiple
    return per_split, -(-inner // per_split)


@functools.cache
def has_pdl(device_index):
    """Programmatic dependent launch: Hopper and later."""
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def launch(kernel, grid, pdl, *args, **kwargs):
    """Launch a kernel that has a ``PDL`` flag. With ``pdl``, directly, with programmatic
    dependent launch, as Inductor launches its own kernels: it is scheduled while the kernel
    before it drains, waits (``gdc_wait``) before reading anything, then lets the next kernel be
    scheduled. Without, through ``wrap_triton``, so that Inductor can launch it from its
    generated code (Inductor launches a triton_op's kernels without PDL, and rejects the option)."""
    if pdl:
        kernel[grid](*args, PDL=True, launch_pdl=True, **kwargs)
    else:
        wrap_triton(kernel)[grid](*args, PDL=False, **kwargs)
