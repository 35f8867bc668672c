"""rmt_kernels: the extension against the torch references, the references against independent formulas,
top-tau selection rules and argument validation. About 10 s on 2 CPU cores."""
import math
import os
import shutil
import types

import pytest
import torch

import rmt_kernels as rk
from rmt_kernels import ops

HAS_EXT = ops._C is not None
needs_ext = pytest.mark.skipif(
    not HAS_EXT, reason=f"rmt_kernels._C is not built ({ops._EXT_ERROR}); {ops.BUILD_HINT}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_cuda_ext = pytest.mark.skipif(
    not (HAS_EXT and torch.cuda.is_available() and ops._C.with_cuda),
    reason="needs a CUDA device and rmt_kernels._C built with CUDA")
ACT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BACKENDS = ["torch"] + (["ext"] if HAS_EXT else [])


@pytest.fixture(autouse=True)
def _auto_backend():
    yield
    rk.set_backend("auto")


def make_batch(batch, seq, d, dtype, layout, seed=0):
    """acts with some exact zeros (to exercise a > 0) and a mask of the named layout."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(batch, seq, d, generator=g) * 3
    acts[torch.rand(batch, seq, d, generator=g) < 0.1] = 0
    if layout == "padded":  # right padding, lengths 1..seq
        lengths = torch.randint(1, seq + 1, (batch,), generator=g)
        mask = torch.arange(seq) < lengths[:, None]
    elif layout == "one_token":  # every example fully masked except one token
        mask = torch.zeros(batch, seq, dtype=torch.bool)
        mask[torch.arange(batch), torch.randint(0, seq, (batch,), generator=g)] = True
    elif layout == "empty_example":  # left padding, the first example has no real token at all
        lengths = torch.randint(1, seq + 1, (batch,), generator=g)
        lengths[0] = 0
        mask = torch.arange(seq).flip(0) < lengths[:, None]
    elif layout == "none":
        mask = torch.zeros(batch, seq, dtype=torch.bool)
    else:
        raise ValueError(layout)
    return acts.to(dtype), mask


def new_acc(batch, d, count_dtype=torch.int64, device="cpu", fill=0.0):
    """Accumulators as the scoring loop holds them: rows of contiguous [layers, d] tensors."""
    rows = [torch.full((3, d), fill, dtype=torch.float64, device=device)[1] for _ in range(3)]
    pos = torch.full((3, d), fill, dtype=count_dtype, device=device)[1]
    tokens = torch.full((), int(fill), dtype=torch.int64, device=device)
    mean = torch.full((batch, d), 7.0, device=device)  # garbage that must be overwritten
    return [*rows, pos, tokens, mean]


def assert_acc_equal(got, want):
    """float64 sums to 1e-9 (both sides sum the same rounded values), counts exactly, float32 means to 1e-6."""
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if i in (3, 4):
            assert torch.equal(g.cpu(), w.cpu())
        else:
            tol = 1e-6 if i == 5 else 1e-9
            torch.testing.assert_close(g.cpu(), w.cpu(), rtol=tol, atol=tol)


CASES = [(1, 1, 37, "padded"), (3, 17, 37, "one_token"), (4, 9, 1031, "empty_example"), (2, 33, 300, "padded"),
         (2, 5, 64, "none")]


# ----------------------------------------------------------------------- references vs plain formulas

@pytest.mark.parametrize("dtype", ACT_DTYPES)
@pytest.mark.parametrize("batch,seq,d,layout", CASES)
def test_accumulate_ref_matches_formula(batch, seq, d, layout, dtype):
    acts, mask = make_batch(batch, seq, d, dtype, layout)
    acc = new_acc(batch, d, fill=1.0)
    rk.accumulate_ref(acts, mask, *acc)
    x, w = acts.double(), mask[..., None].double()
    n_ex = mask.sum(1, keepdim=True)
    want = [1 + (x * w).sum((0, 1)), 1 + (x.abs() * w).sum((0, 1)), 1 + (x * x * w).sum((0, 1)),
            1 + ((x > 0) & mask[..., None]).sum((0, 1)), 1 + mask.sum(),
            torch.where(n_ex > 0, (x * w).sum(1) / n_ex.clamp(min=1), 0.0).float()]
    assert_acc_equal(acc, want)


@pytest.mark.parametrize("dtype", ACT_DTYPES)
@pytest.mark.parametrize("batch,seq,d,layout", CASES)
def test_accumulate_sq_diff_ref_matches_formula(batch, seq, d, layout, dtype):
    a, mask = make_batch(batch, seq, d, dtype, layout, seed=1)
    b, _ = make_batch(batch, seq, d, dtype, layout, seed=2)
    sq, tokens = torch.ones(d, dtype=torch.float64), torch.ones(1, dtype=torch.int64)
    rk.accumulate_sq_diff_ref(a, b, mask, sq, tokens)
    want = 1 + ((a.double() - b.double()) ** 2 * mask[..., None]).sum((0, 1))
    torch.testing.assert_close(sq, want, rtol=1e-9, atol=1e-9)
    assert tokens.item() == 1 + mask.sum().item()


def test_integer_masks_count_nonzero_as_real():
    acts, mask = make_batch(2, 6, 37, torch.float32, "padded")
    want = new_acc(2, 37)
    rk.accumulate_ref(acts, mask, *want)
    for dtype in (torch.uint8, torch.int64):
        got = new_acc(2, 37)
        rk.accumulate_(acts, mask.to(dtype), *got)
        assert_acc_equal(got, want)


def test_accumulate_works_on_tensors_that_require_grad():
    acts, mask = make_batch(2, 4, 37, torch.float32, "padded")
    acc = new_acc(2, 37)
    rk.accumulate_(acts.requires_grad_(), mask, *acc)
    assert not acc[0].requires_grad


# -------------------------------------------------------------------------- extension vs reference

@needs_ext
@pytest.mark.parametrize("count_dtype", [torch.int64, torch.float64])
@pytest.mark.parametrize("dtype", ACT_DTYPES)
@pytest.mark.parametrize("batch,seq,d,layout", CASES)
def test_accumulate_ext_matches_ref_cpu(batch, seq, d, layout, dtype, count_dtype):
    rk.set_backend("ext")
    got, want = new_acc(batch, d, count_dtype), new_acc(batch, d, count_dtype)
    for seed in (0, 1):  # twice, so the second call adds to nonzero running sums
        acts, mask = make_batch(batch, seq, d, dtype, layout, seed=seed)
        rk.accumulate_(acts, mask, *got)
        rk.accumulate_ref(acts, mask, *want)
    assert_acc_equal(got, want)


@needs_ext
@pytest.mark.parametrize("dtype", ACT_DTYPES)
def test_accumulate_ext_without_example_mean_and_with_1d_tokens(dtype):
    rk.set_backend("ext")
    acts, mask = make_batch(3, 20, 1031, dtype, "padded")
    got, want = new_acc(3, 1031), new_acc(3, 1031)
    got[4], want[4] = torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
    rk.accumulate_(acts, mask, *got[:5])
    rk.accumulate_ref(acts, mask, *want[:5])
    assert_acc_equal(got[:5], want[:5])


@needs_ext
@pytest.mark.parametrize("dtype", ACT_DTYPES)
@pytest.mark.parametrize("batch,seq,d,layout", CASES)
def test_accumulate_sq_diff_ext_matches_ref_cpu(batch, seq, d, layout, dtype):
    rk.set_backend("ext")
    a, mask = make_batch(batch, seq, d, dtype, layout, seed=1)
    b, _ = make_batch(batch, seq, d, dtype, layout, seed=2)
    got = [torch.ones(d, dtype=torch.float64), torch.ones((), dtype=torch.int64)]
    want = [t.clone() for t in got]
    rk.accumulate_sq_diff_(a, b, mask, *got)
    rk.accumulate_sq_diff_ref(a, b, mask, *want)
    torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-9)
    assert torch.equal(got[1], want[1])


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_16_bit_value_converts_exactly(dtype):
    """One example per bit pattern (inf, NaN, subnormals included): its mean is the value itself."""
    values = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    acts = values.reshape(-1, 1, 1).expand(-1, 1, 3).contiguous()
    mask = torch.ones(acts.shape[:2], dtype=torch.bool)
    acc = new_acc(len(values), 3)
    rk.set_backend("ext")
    rk.accumulate_(acts, mask, *acc)
    torch.testing.assert_close(acc[5], acts[:, 0].float(), rtol=0, atol=0, equal_nan=True)


@needs_cuda_ext
@pytest.mark.parametrize("count_dtype", [torch.int64, torch.float64])
@pytest.mark.parametrize("dtype", ACT_DTYPES)
@pytest.mark.parametrize("batch,seq,d,layout", CASES + [(2, 100, 1031, "padded")])
def test_accumulate_cuda_matches_ref(batch, seq, d, layout, dtype, count_dtype):
    rk.set_backend("ext")
    got, want = new_acc(batch, d, count_dtype, "cuda"), new_acc(batch, d, count_dtype)
    for seed in (0, 1):
        acts, mask = make_batch(batch, seq, d, dtype, layout, seed=seed)
        rk.accumulate_(acts.cuda(), mask.cuda(), *got)
        rk.accumulate_ref(acts, mask, *want)
    assert_acc_equal(got, want)


@needs_cuda_ext
@pytest.mark.parametrize("dtype", ACT_DTYPES)
@pytest.mark.parametrize("batch,seq,d,layout", CASES + [(2, 100, 1031, "padded")])
def test_accumulate_sq_diff_cuda_matches_ref(batch, seq, d, layout, dtype):
    rk.set_backend("ext")
    a, mask = make_batch(batch, seq, d, dtype, layout, seed=1)
    b, _ = make_batch(batch, seq, d, dtype, layout, seed=2)
    got = [torch.ones(d, dtype=torch.float64, device="cuda"), torch.ones(1, dtype=torch.int64, device="cuda")]
    want = [t.cpu() for t in got]
    rk.accumulate_sq_diff_(a.cuda(), b.cuda(), mask.cuda(), *got)
    rk.accumulate_sq_diff_ref(a, b, mask, *want)
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-9, atol=1e-9)
    assert torch.equal(got[1].cpu(), want[1])


@needs_cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_tensors_work_on_every_backend(backend):
    rk.set_backend(backend)
    acts, mask = make_batch(2, 7, 37, torch.bfloat16, "empty_example")
    got, want = new_acc(2, 37, device="cuda"), new_acc(2, 37)
    rk.accumulate_(acts.cuda(), mask.cuda(), *got)
    rk.accumulate_ref(acts, mask, *want)
    assert_acc_equal(got, want)


# ------------------------------------------------------------------------------------------ backend

def test_extension_is_built_where_a_compiler_exists():
    """Where a C++ compiler exists the extension must import: otherwise every `needs_ext` test above skips and a
    broken kernel build would pass CI. RMT_NO_EXT=1 tests the pure-torch fallback on purpose."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if not compiler:
        pytest.skip("no C++ compiler (c++ or g++): the pure-torch reference kernels are the expected backend")
    if os.environ.get("RMT_NO_EXT") == "1":
        pytest.skip("RMT_NO_EXT=1: the pure-torch reference kernels were asked for")
    assert ops._C is not None, (
        f"a C++ compiler exists ({compiler}) but rmt_kernels._C does not import ({ops._EXT_ERROR}), so the "
        f"extension tests skip; {ops.BUILD_HINT}, or set RMT_NO_EXT=1 to test the pure-torch fallback on purpose")


def test_backend_switch(monkeypatch):
    rk.set_backend("torch")
    assert rk.backend() == "torch"
    assert rk.backend("cpu") == rk.backend("cuda") == "torch"
    rk.set_backend("auto")
    assert rk.backend() == ("torch" if not HAS_EXT else "ext-cuda" if ops._C.with_cuda else "ext-cpu")
    assert rk.backend("cpu") == ("ext-cpu" if HAS_EXT else "torch")
    assert rk.backend(torch.device("cuda")) == ("ext-cuda" if HAS_EXT and ops._C.with_cuda else "torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        rk.set_backend("fast")
    monkeypatch.setattr(ops, "_C", None)
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation -e ."):
        rk.set_backend("ext")
    rk.set_backend("auto")
    assert rk.backend() == rk.backend("cpu") == rk.backend("cuda") == "torch"
    acts, mask = make_batch(2, 3, 37, torch.float32, "padded")
    rk.accumulate_(acts, mask, *new_acc(2, 37))  # falls back to the reference


@pytest.mark.parametrize("with_cuda", [False, True])
def test_backend_for_a_device(monkeypatch, with_cuda):
    """backend(device) names what runs for tensors on that device: an extension built without CUDA must not be
    reported for CUDA tensors, which then run the torch reference. A stand-in _C tests this without a GPU."""
    monkeypatch.setattr(ops, "_C", types.SimpleNamespace(with_cuda=with_cuda))
    for name in ("auto", "ext"):
        rk.set_backend(name)
        cuda = "ext-cuda" if with_cuda else "torch"
        assert rk.backend("cuda") == rk.backend("cuda:1") == rk.backend(torch.device("cuda", 0)) == cuda
        assert rk.backend("cpu") == rk.backend(torch.device("cpu")) == "ext-cpu"
        assert rk.backend("meta") == "torch"
        assert rk.backend() == ("ext-cuda" if with_cuda else "ext-cpu")  # no device: how the extension was built
        for device in ("cpu", "cuda", "meta"):  # the answer is the dispatch of accumulate_ itself
            tensor = types.SimpleNamespace(device=torch.device(device))  # no CUDA tensor needed for this
            assert (rk.backend(device) != "torch") == ops._use_ext(tensor)
    rk.set_backend("torch")
    assert rk.backend() == rk.backend("cpu") == rk.backend("cuda") == "torch"
    rk.set_backend("auto")
    monkeypatch.setattr(ops, "_C", None)
    assert rk.backend() == rk.backend("cpu") == rk.backend("cuda") == "torch"


# ------------------------------------------------------------------------------------------- top-tau

TOP_TAU_IMPLS = [rk.top_tau_ref] + ([rk.top_tau] if HAS_EXT else [])


def brute_force_top(scores, k):
    flat = scores.flatten().tolist()
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k]
    return [(i // scores.shape[1], i % scores.shape[1]) for i in order]


@pytest.mark.parametrize("impl", TOP_TAU_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_top_tau_matches_brute_force_with_many_ties(impl, dtype):
    rk.set_backend("ext" if HAS_EXT else "torch")
    scores = torch.randint(0, 5, (7, 13), generator=torch.Generator().manual_seed(0)).to(dtype)
    for tau in (1, 5, 10, 33.3, 50, 100):
        k = math.floor(tau / 100 * 91 + 0.5)
        indices, threshold = impl(scores, tau)
        assert indices.dtype == torch.int64 and indices.shape == (k, 2)
        assert [tuple(r) for r in indices.tolist()] == brute_force_top(scores, k)
        assert threshold == scores[tuple(indices[-1])].item()


@pytest.mark.parametrize("impl", TOP_TAU_IMPLS)
def test_top_tau_constructed_ties_and_threshold(impl):
    scores = torch.tensor([[1.0, 3.0, 3.0], [3.0, 2.0, -0.0], [0.0, 3.0, 1.0]])
    indices, threshold = impl(scores, 100 * 5 / 9)  # k = 5
    assert indices.tolist() == [[0, 1], [0, 2], [1, 0], [2, 1], [1, 1]]
    assert threshold == 2.0
    indices, threshold = impl(scores, 100)  # -0.0 == 0.0, so [1, 2] comes before [2, 0]
    assert indices.tolist() == [[0, 1], [0, 2], [1, 0], [2, 1], [1, 1], [0, 0], [2, 2], [1, 2], [2, 0]]
    assert threshold == 0.0


@pytest.mark.parametrize("impl", TOP_TAU_IMPLS)
def test_top_tau_rounds_half_up(impl):
    scores = torch.arange(10.0).reshape(2, 5)
    assert len(impl(scores, 25)[0]) == 3  # 2.5 -> 3 (Python's round() would give 2)
    assert len(impl(scores, 15)[0]) == 2  # 1.5 -> 2
    assert len(impl(torch.zeros(4, 5), 2.5)[0]) == 1  # 0.5 -> 1, exact although 0.025 is not in binary
    assert len(impl(scores, 14.9)[0]) == 1


@pytest.mark.parametrize("impl", TOP_TAU_IMPLS)
def test_top_tau_all_and_none(impl):
    scores = torch.randn(3, 37, generator=torch.Generator().manual_seed(1))
    indices, threshold = impl(scores, 100)
    assert len(indices) == 111 and threshold == scores.min().item()
    indices, threshold = impl(scores, 0.1)  # 0.111 units rounds to none
    assert indices.shape == (0, 2) and threshold == math.inf


@pytest.mark.parametrize("impl", TOP_TAU_IMPLS)
def test_top_tau_rejects_nan_and_bad_tau(impl):
    scores = torch.zeros(3, 4)
    scores[1, 2] = math.nan
    with pytest.raises(ValueError, match=r"NaN.*layer 1, unit 2"):
        impl(scores, 10)
    for tau in (0, -1, 100.5, math.nan):
        with pytest.raises(ValueError, match="0 < tau <= 100"):
            impl(torch.zeros(3, 4), tau)
    with pytest.raises(TypeError, match="tau must be a number"):
        impl(torch.zeros(3, 4), "10")
    with pytest.raises(ValueError, match="2-D"):
        impl(torch.zeros(12), 10)
    with pytest.raises(TypeError, match="floating"):
        impl(torch.zeros(3, 4, dtype=torch.int64), 10)


@needs_ext
def test_top_tau_ext_matches_ref_on_large_random_scores():
    rk.set_backend("ext")
    scores = torch.randn(12, 3072, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)  # many ties
    for tau in (1, 10, 20):
        got, want = rk.top_tau(scores, tau), rk.top_tau_ref(scores, tau)
        assert torch.equal(got[0], want[0]) and got[1] == want[1]
    got = rk.top_tau(scores.t().contiguous().t(), 10)  # a non-contiguous view is fine here
    assert torch.equal(got[0], rk.top_tau_ref(scores, 10)[0])


def test_top_tau_mask():
    scores = torch.tensor([[1.0, 3.0, 3.0], [3.0, 2.0, 0.0]])
    mask = rk.top_tau_mask(scores, 50)
    assert mask.tolist() == [[False, True, True], [True, False, False]]


# ---------------------------------------------------------------------------------------- validation

def bad_accumulate_args():
    """(description, kwargs changes, exception, message pattern) for one good [2, 5, 37] call."""
    acts = torch.randn(2, 5, 37)
    return [
        ("acts not a tensor", {"acts": acts.numpy()}, TypeError, "acts must be a torch.Tensor"),
        ("acts float64", {"acts": acts.double()}, TypeError, "acts must have dtype float32 or bfloat16 or float16"),
        ("acts 2-D", {"acts": acts[0]}, ValueError, r"acts must be 3-D"),
        ("acts non-contiguous", {"acts": torch.randn(2, 5, 74)[..., ::2]}, ValueError, "acts must be contiguous"),
        ("mask float", {"mask": torch.ones(2, 5)}, TypeError, "mask must have dtype bool"),
        ("mask shape", {"mask": torch.ones(2, 6, dtype=torch.bool)}, ValueError, r"mask must have shape \[2, 5\]"),
        ("mask device", {"mask": torch.ones(2, 5, dtype=torch.bool, device="meta")}, ValueError,
         "mask must be on cpu"),
        ("sum float32", {"sum": torch.zeros(37)}, TypeError, "sum must have dtype float64"),
        ("sum shape", {"sum": torch.zeros(36, dtype=torch.float64)}, ValueError, r"sum must have shape \[37\]"),
        ("sq_sum column view", {"sq_sum": torch.zeros(37, 3, dtype=torch.float64)[:, 1]}, ValueError,
         "sq_sum must be contiguous"),
        ("pos_count int32", {"pos_count": torch.zeros(37, dtype=torch.int32)}, TypeError,
         "pos_count must have dtype int64 or float64"),
        ("tokens shape", {"tokens": torch.zeros(2, dtype=torch.int64)}, ValueError, "tokens must be a 0-dim or"),
        ("tokens dtype", {"tokens": torch.zeros((), dtype=torch.float64)}, TypeError, "tokens must have dtype int64"),
        ("example_mean shape", {"example_mean": torch.zeros(37)}, ValueError,
         r"example_mean must have shape \[2, 37\]"),
    ]


def good_accumulate_args():
    acts, mask = make_batch(2, 5, 37, torch.float32, "padded")
    s, a, q, p, t, m = new_acc(2, 37)
    return dict(acts=acts, mask=mask, sum=s, abs_sum=a, sq_sum=q, pos_count=p, tokens=t, example_mean=m)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", bad_accumulate_args(), ids=lambda c: c[0])
def test_accumulate_rejects_bad_arguments(backend, case):
    _, change, exc, pattern = case
    rk.set_backend(backend)
    args = good_accumulate_args()
    args.update(change)
    for fn in (rk.accumulate_, rk.accumulate_ref):
        with pytest.raises(exc, match=pattern):
            fn(**args)


@needs_ext
@pytest.mark.parametrize("case", [c for c in bad_accumulate_args() if c[0] != "acts not a tensor"],
                         ids=lambda c: c[0])
def test_extension_checks_its_own_arguments(case):
    """The C++ entry point, called directly, also refuses bad input with the argument's name."""
    _, change, exc, pattern = case
    args = good_accumulate_args()
    args.update(change)
    with pytest.raises(exc, match=pattern):
        ops._C.accumulate_(**args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulate_sq_diff_rejects_bad_arguments(backend):
    rk.set_backend(backend)
    a, mask = make_batch(2, 5, 37, torch.float32, "padded")
    sq, tokens = torch.zeros(37, dtype=torch.float64), torch.zeros((), dtype=torch.int64)
    with pytest.raises(TypeError, match="acts_b must have dtype float32"):
        rk.accumulate_sq_diff_(a, a.bfloat16(), mask, sq, tokens)
    with pytest.raises(ValueError, match=r"acts_b must have shape \[2, 5, 37\]"):
        rk.accumulate_sq_diff_(a, a[:, :4].contiguous(), mask, sq, tokens)
    with pytest.raises(ValueError, match="sq_sum must be on cpu"):
        rk.accumulate_sq_diff_(a, a, mask, sq.to("meta"), tokens)
    if HAS_EXT:
        with pytest.raises(TypeError, match="acts_b must have the dtype of acts_a"):
            ops._C.accumulate_sq_diff_(a, a.half(), mask, sq, tokens)
