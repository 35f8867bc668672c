"""rm-tension kernels: streaming per-neuron statistics and top-tau neuron selection.

The compiled extension (rmt_kernels._C, C++/OpenMP + optional CUDA) is optional: without it every op runs
its pure-torch reference. See rmt_kernels.ops for the semantics, set_backend() for the switch and
backend(device) for what runs on a device.
"""
from .ops import (
    accumulate_,
    accumulate_ref,
    accumulate_sq_diff_,
    accumulate_sq_diff_ref,
    backend,
    set_backend,
    top_tau,
    top_tau_mask,
    top_tau_ref,
)

__all__ = [
    "accumulate_",
    "accumulate_ref",
    "accumulate_sq_diff_",
    "accumulate_sq_diff_ref",
    "backend",
    "set_backend",
    "top_tau",
    "top_tau_mask",
    "top_tau_ref",
]
