"""Per-neuron masked accumulation and top-tau neuron selection.

Each op validates its arguments in Python (so errors read the same whichever backend runs), then runs
either the compiled extension `rmt_kernels._C` (C++/OpenMP on CPU, CUDA kernels when built with CUDA)
or the pure-torch reference `<op>_ref` defined beside it. The choice is made per call: see
`set_backend`. Without the extension everything still works, only slower.
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction

import torch

try:
    from . import _C
    _EXT_ERROR: ImportError | None = None
except ImportError as err:  # not built, or built against another torch: fall back to the references
    _C = None
    _EXT_ERROR = err

BUILD_HINT = ("build it in the repository root with `pip install --no-build-isolation -e .` "
              "(or `python setup.py build_ext --inplace`)")
_ACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MASK_DTYPES = (torch.bool, torch.uint8, torch.int32, torch.int64)
_COUNT_DTYPES = (torch.int64, torch.float64)
_BACKENDS = ("auto", "ext", "torch")
_backend = "auto"


def set_backend(name: str) -> None:
    """Choose the implementation: "auto" (the extension if it imported, else torch), "ext" or "torch".

    With the extension selected, CPU tensors run the C++ kernels and CUDA tensors the CUDA kernels if the
    extension was built with CUDA (the torch reference otherwise).
    """
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}; got {name!r}")
    if name == "ext" and _C is None:
        raise RuntimeError(f"the rmt_kernels extension is not available ({_EXT_ERROR}); {BUILD_HINT}")
    _backend = name


def _ext_runs_on(device: torch.device, cuda_kernel: bool = True) -> bool:
    """Whether tensors on `device` run the extension: CPU always (when it is selected), CUDA only when it was
    built with CUDA (and the op has a CUDA kernel), any other device never."""
    if _backend == "torch" or _C is None:
        return False
    return device.type == "cpu" or (cuda_kernel and device.type == "cuda" and bool(_C.with_cuda))


def backend(device: torch.device | str | None = None) -> str:
    """The implementation that runs: "ext-cuda" (the extension's CUDA kernels), "ext-cpu" (its C++ kernels)
    or "torch" (the pure-torch references).

    With `device` (a torch.device or a string such as "cuda", "cuda:1", "cpu"): what `accumulate_` and
    `accumulate_sq_diff_` run for tensors on that device — "ext-cpu" for CPU, "ext-cuda" for CUDA only if the
    extension was built with CUDA kernels (else "torch": CUDA tensors then run the references), "torch" for
    any other device or when the extension is not selected. `top_tau` has no CUDA kernel: it runs the
    reference on CUDA tensors. Without `device`: how the selected extension was built ("ext-cuda" if with
    CUDA kernels, else "ext-cpu"), or "torch" — pass the device you compute on to know what runs there.
    """
    if _backend == "torch" or _C is None:
        return "torch"
    if device is None:
        return "ext-cuda" if _C.with_cuda else "ext-cpu"
    device = torch.device(device)
    if not _ext_runs_on(device):
        return "torch"
    return "ext-cuda" if device.type == "cuda" else "ext-cpu"


def _use_ext(t: torch.Tensor, cuda_kernel: bool = True) -> bool:
    return _ext_runs_on(t.device, cuda_kernel)


# ---------------------------------------------------------------------------------------------- checks

def _dtype_names(dtypes) -> str:
    return " or ".join(str(d).removeprefix("torch.") for d in dtypes)


def _check(name: str, t, dtypes, shape=None, device: torch.device | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_dtype_names(dtypes)}, got {_dtype_names([t.dtype])}")
    if shape is not None and t.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} like the activations, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {t.stride()}; pass {name}.contiguous()")


def _check_acts(name: str, acts) -> None:
    _check(name, acts, _ACT_DTYPES)
    if acts.dim() != 3:
        raise ValueError(f"{name} must be 3-D [batch, seq, d], got shape {list(acts.shape)}")


def _check_mask(mask, acts: torch.Tensor) -> torch.Tensor:
    """Validated mask as bool; integer masks (e.g. a tokenizer's attention_mask) count nonzero as real."""
    _check("mask", mask, _MASK_DTYPES, acts.shape[:2], acts.device)
    return mask if mask.dtype == torch.bool else mask != 0


def _check_tokens(tokens, device: torch.device) -> None:
    _check("tokens", tokens, (torch.int64,), device=device)
    if tokens.shape not in ((), (1,)):
        raise ValueError(f"tokens must be a 0-dim or [1] tensor, got shape {list(tokens.shape)}")


def _check_accumulate(acts, mask, sum, abs_sum, sq_sum, pos_count, tokens, example_mean) -> torch.Tensor:
    _check_acts("acts", acts)
    batch, _, d = acts.shape
    mask = _check_mask(mask, acts)
    for name, t in (("sum", sum), ("abs_sum", abs_sum), ("sq_sum", sq_sum)):
        _check(name, t, (torch.float64,), (d,), acts.device)
    _check("pos_count", pos_count, _COUNT_DTYPES, (d,), acts.device)
    _check_tokens(tokens, acts.device)
    if example_mean is not None:
        _check("example_mean", example_mean, (torch.float32,), (batch, d), acts.device)
    return mask


def _check_sq_diff(acts_a, acts_b, mask, sq_sum, tokens) -> torch.Tensor:
    _check_acts("acts_a", acts_a)
    _check("acts_b", acts_b, (acts_a.dtype,), acts_a.shape, acts_a.device)
    mask = _check_mask(mask, acts_a)
    _check("sq_sum", sq_sum, (torch.float64,), (acts_a.shape[2],), acts_a.device)
    _check_tokens(tokens, acts_a.device)
    return mask


def _top_tau_k(scores, tau) -> int:
    """Validate, then k = floor(tau/100 * n + 1/2) on the decimal value of tau: half rounds up, exactly."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [layers, d], got shape {list(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must have a floating dtype, got {_dtype_names([scores.dtype])}")
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise TypeError(f"tau must be a number (percent), got {type(tau).__name__}")
    if not 0 < tau <= 100:
        raise ValueError(f"tau is a percentage and must satisfy 0 < tau <= 100, got {tau}")
    nan = torch.isnan(scores)
    if nan.any():
        first = int(nan.flatten().nonzero()[0])
        raise ValueError(f"scores contain {int(nan.sum())} NaN value(s) (first at layer {first // scores.shape[1]}, "
                         f"unit {first % scores.shape[1]}); fix the scoring run before selecting neurons")
    # str() recovers the decimal the user wrote (10.0, 2.5, ...) so ties at .5 do not hinge on binary error.
    return math.floor(Fraction(str(float(tau))) * scores.numel() / 100 + Fraction(1, 2))


# ------------------------------------------------------------------------------------ torch references

@torch.no_grad()
def _accumulate_torch(acts, mask, sum, abs_sum, sq_sum, pos_count, tokens, example_mean):
    x = acts[mask].double()
    sum += x.sum(0)
    abs_sum += x.abs().sum(0)
    sq_sum += x.square().sum(0)
    pos_count += (x > 0).sum(0)
    tokens += x.shape[0]
    if example_mean is not None:
        example = mask.nonzero()[:, 0]  # acts[mask] keeps row-major order, so row i is from this example
        sums = torch.zeros(example_mean.shape, dtype=torch.float64, device=acts.device).index_add_(0, example, x)
        example_mean.copy_(sums / mask.sum(1, keepdim=True).clamp(min=1))


@torch.no_grad()
def _accumulate_sq_diff_torch(acts_a, acts_b, mask, sq_sum, tokens):
    x = acts_a[mask].double() - acts_b[mask].double()
    sq_sum += x.square().sum(0)
    tokens += x.shape[0]


@torch.no_grad()
def _top_tau_torch(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    if k == 0:
        return torch.empty((0, 2), dtype=torch.int64, device=scores.device), math.inf
    values, order = torch.sort(scores.flatten(), descending=True, stable=True)
    top = order[:k]
    d = scores.shape[1]
    return torch.stack((top // d, top % d), dim=1), float(values[k - 1])


def accumulate_ref(acts, mask, sum, abs_sum, sq_sum, pos_count, tokens, example_mean=None) -> None:
    """Pure-torch reference of `accumulate_` (same arguments, same checks)."""
    mask = _check_accumulate(acts, mask, sum, abs_sum, sq_sum, pos_count, tokens, example_mean)
    _accumulate_torch(acts, mask, sum, abs_sum, sq_sum, pos_count, tokens, example_mean)


def accumulate_sq_diff_ref(acts_a, acts_b, mask, sq_sum, tokens) -> None:
    """Pure-torch reference of `accumulate_sq_diff_` (same arguments, same checks)."""
    mask = _check_sq_diff(acts_a, acts_b, mask, sq_sum, tokens)
    _accumulate_sq_diff_torch(acts_a, acts_b, mask, sq_sum, tokens)


def top_tau_ref(scores: torch.Tensor, tau: float) -> tuple[torch.Tensor, float]:
    """Pure-torch reference of `top_tau` (a stable sort of the flattened scores)."""
    return _top_tau_torch(scores, _top_tau_k(scores, tau))


# ----------------------------------------------------------------------------------------- public ops

def accumulate_(acts, mask, sum, abs_sum, sq_sum, pos_count, tokens, example_mean=None) -> None:
    """Add one batch of one layer's activations to per-neuron running statistics, in place.

    acts: [batch, seq, d] float32 / bfloat16 / float16, contiguous. mask: [batch, seq], True (or nonzero for
    uint8 / int32 / int64) marks a real token. Over the real tokens: sum, abs_sum, sq_sum ([d] float64) +=
    a, |a|, a^2; pos_count ([d] int64 or float64) += count of a > 0; tokens (0-dim or [1] int64) += number
    of real tokens. example_mean, if given ([batch, d] float32), is overwritten with each example's mean over
    its real tokens (0 for an example without any). All tensors on acts' device and contiguous; rows of a
    contiguous [layers, d] accumulator (`acc[layer]`) qualify. Sums are taken in float64.
    """
    mask = _check_accumulate(acts, mask, sum, abs_sum, sq_sum, pos_count, tokens, example_mean)
    impl = _C.accumulate_ if _use_ext(acts) else _accumulate_torch
    impl(acts, mask, sum, abs_sum, sq_sum, pos_count, tokens, example_mean)


def accumulate_sq_diff_(acts_a, acts_b, mask, sq_sum, tokens) -> None:
    """sq_sum[d] (float64) += sum over real tokens of (acts_a - acts_b)^2; tokens += number of real tokens.

    acts_a, acts_b: [batch, seq, d], same dtype (float32 / bfloat16 / float16) and device, contiguous; mask as
    in `accumulate_`. sqrt(sq_sum / tokens) is the "change" score (RMS of trained - base activations).
    """
    mask = _check_sq_diff(acts_a, acts_b, mask, sq_sum, tokens)
    impl = _C.accumulate_sq_diff_ if _use_ext(acts_a) else _accumulate_sq_diff_torch
    impl(acts_a, acts_b, mask, sq_sum, tokens)


def top_tau(scores: torch.Tensor, tau: float) -> tuple[torch.Tensor, float]:
    """The top tau percent of all units of scores [layers, d]: (indices, threshold).

    Selects exactly k = floor(tau/100 * layers * d + 1/2) units (half rounds up, unlike Python's round(),
    evaluated exactly on the decimal value of tau), highest score first, equal scores by lower flat index
    (layer-major). indices: int64 [k, 2] of (layer, unit) in rank order; threshold: the k-th selected score
    (+inf when k == 0, i.e. nothing passes). 0 < tau <= 100; NaN scores raise ValueError.
    """
    k = _top_tau_k(scores, tau)
    if _use_ext(scores, cuda_kernel=False):
        return _C.top_tau(scores.contiguous(), k)
    return _top_tau_torch(scores, k)


def top_tau_mask(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """Bool [layers, d] mask of the units `top_tau(scores, tau)` selects."""
    indices, _ = top_tau(scores, tau)
    selected = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    selected[indices[:, 0], indices[:, 1]] = True
    return selected
