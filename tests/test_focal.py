"""Focal loss: reference vs torchvision, fused CPU path vs reference, gradcheck, dtypes and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from detector.losses import focal
from detector.losses.focal import sigmoid_focal_loss, sigmoid_focal_loss_reference

GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
ALPHAS = (None, 0.25)
REDUCTIONS = ("sum", "mean", "none")
# N deliberately not a multiple of any block or chunk size; C = 1 included.
SHAPES = ((1, 1), (37, 1), (129, 20), (70, 3), (11, 130))


@pytest.fixture
def eager_cpu(monkeypatch, one_thread):
    """Use the eager chunked CPU path (no torch.compile) so the parameter grids run fast."""
    monkeypatch.setattr(focal._compiled_cpu, "enabled", False)


@pytest.fixture
def one_thread():
    """One intra-op thread for small inputs: on a loaded 2-core machine OpenMP barriers slow them 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_case(n: int, c: int, seed: int, dtype=torch.float64, scale: float = 8.0, extremes: bool = True):
    """Random logits (a few at +-100) and labels covering positives, -1 (all negative) and -2 (ignore)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen, dtype=torch.float64) * scale
    if extremes and n * c >= 2:
        x.view(-1)[0] = 100.0
        x.view(-1)[-1] = -100.0
    labels = torch.randint(-2, c, (n,), generator=gen)
    return x.to(dtype), labels


def one_hot(labels: torch.Tensor, c: int, dtype) -> torch.Tensor:
    return F.one_hot(labels.clamp(min=0), c).to(dtype) * (labels >= 0)[:, None].to(dtype)


def loss_and_grad(fn, x, labels, reduction, grad_out=None, **kw):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, labels, reduction=reduction, **kw)
    if grad_out is None:
        grad_out = torch.ones_like(loss)
    loss.backward(grad_out)
    return loss.detach(), x.grad


def _torchvision_loss(x, target, reduction, alpha, gamma):
    return torchvision.ops.sigmoid_focal_loss(x, target, -1 if alpha is None else alpha, gamma, reduction)


@pytest.mark.parametrize("gamma", (0.0, 0.5, 1.0, 2.0, 5.0))
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("shape", ((1, 1), (37, 1), (129, 20), (70, 3)))
def test_reference_matches_torchvision(shape, alpha, gamma):
    """The reference equals torchvision's focal loss with one-hot targets (values and gradients, float64)."""
    n, c = shape
    x, labels = make_case(n, c, seed=n * 31 + c, extremes=False, scale=4.0)
    labels = labels.clamp(min=-1)  # torchvision has no "ignore"
    target = one_hot(labels, c, torch.float64)
    for reduction in REDUCTIONS:
        ours, g_ours = loss_and_grad(
            sigmoid_focal_loss_reference, x, labels, reduction, alpha=alpha, gamma=gamma
        )
        ref, g_ref = loss_and_grad(_torchvision_loss, x, target, reduction, alpha=alpha, gamma=gamma)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


def test_reference_ignores_rows_like_dropping_them():
    """-2 rows contribute nothing: the loss equals torchvision's on the remaining rows, their gradient is
    0."""
    x, labels = make_case(64, 7, seed=3, extremes=False)
    keep = labels != -2
    assert keep.any() and (~keep).any()
    loss, grad = loss_and_grad(sigmoid_focal_loss_reference, x, labels, "sum")
    tv = torchvision.ops.sigmoid_focal_loss(x[keep], one_hot(labels[keep], 7, x.dtype), 0.25, 2.0, "sum")
    torch.testing.assert_close(loss, tv)
    assert torch.all(grad[~keep] == 0)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_matches_reference_float64(eager_cpu, shape, alpha, gamma):
    """Fused CPU loss and gradient equal the autograd reference, including +-100 logits and -1/-2 labels."""
    n, c = shape
    x, labels = make_case(n, c, seed=n + 7 * c)
    for reduction in REDUCTIONS:
        grad_out = (
            torch.randn(n, c, dtype=torch.float64) if reduction == "none" else torch.tensor(0.7).double()
        )
        ref, g_ref = loss_and_grad(
            sigmoid_focal_loss_reference, x, labels, reduction, grad_out, alpha=alpha, gamma=gamma
        )
        ours, g_ours = loss_and_grad(
            sigmoid_focal_loss, x, labels, reduction, grad_out, alpha=alpha, gamma=gamma, backend="cpu"
        )
        assert torch.isfinite(ours).all() and torch.isfinite(g_ours).all()
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_extreme_logits_exact_values(eager_cpu, gamma):
    """At |x| = 100: a confident right answer costs ~0, a confident wrong one costs alpha_t * 100 with
    gradient -alpha_t (positive) or +(1 - alpha) (negative); nothing is NaN, gamma = 0 included."""
    x = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    loss, grad = loss_and_grad(sigmoid_focal_loss, x, labels, "none", alpha=0.25, gamma=gamma, backend="cpu")
    expected = torch.tensor([[0.0, 0.0], [25.0, 75.0]], dtype=torch.float64)
    torch.testing.assert_close(loss, expected, atol=1e-30, rtol=1e-12)
    expected_grad = torch.tensor([[0.0, 0.0], [-0.25, 0.75]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected_grad, atol=1e-30, rtol=1e-12)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_gamma_zero_is_cross_entropy(eager_cpu, alpha):
    """gamma = 0 gives binary cross entropy (alpha-weighted if alpha is set) exactly."""
    x, labels = make_case(50, 6, seed=5)
    labels = labels.clamp(min=-1)
    target = one_hot(labels, 6, x.dtype)
    weight = None if alpha is None else torch.where(target > 0, alpha, 1 - alpha)
    bce = F.binary_cross_entropy_with_logits(x, target, weight=weight, reduction="sum")
    loss = sigmoid_focal_loss(x, labels, alpha=alpha, gamma=0.0, backend="cpu")
    torch.testing.assert_close(loss, bce, rtol=1e-12, atol=0)


def test_mean_divides_by_non_ignored_elements(eager_cpu):
    x, labels = make_case(40, 5, seed=9)
    valid = int((labels != -2).sum())
    total = sigmoid_focal_loss(x, labels, reduction="sum", backend="cpu")
    mean = sigmoid_focal_loss(x, labels, reduction="mean", backend="cpu")
    torch.testing.assert_close(mean, total / (valid * 5))
    all_ignored = torch.full((40,), -2)
    for backend in ("cpu", "reference"):
        loss, grad = loss_and_grad(sigmoid_focal_loss, x, all_ignored, "mean", backend=backend)
        assert loss.item() == 0.0 and torch.all(grad == 0)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32))
@pytest.mark.parametrize("backend", ("cpu", "reference"))
def test_low_precision_within_tolerance(eager_cpu, dtype, backend):
    """Half and bfloat16 logits: fp32 math, loss sum in fp32, gradient in the logits' dtype."""
    x64, labels = make_case(300, 20, seed=11, scale=3.0)
    x = x64.to(dtype)
    ref, g_ref = loss_and_grad(sigmoid_focal_loss_reference, x.double(), labels, "sum")
    loss, grad = loss_and_grad(sigmoid_focal_loss, x, labels, "sum", backend=backend)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-6}[dtype]
    torch.testing.assert_close(grad.double(), g_ref, rtol=tol, atol=tol * 1e-2)
    per_elem = sigmoid_focal_loss(x, labels, reduction="none", backend=backend)
    assert per_elem.dtype == dtype and per_elem.shape == x.shape


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("backend", ("cpu", "reference"))
@pytest.mark.parametrize("gamma", (0.0, 0.5, 2.0))
def test_gradcheck(eager_cpu, backend, reduction, gamma):
    x, labels = make_case(7, 3, seed=13, scale=3.0, extremes=False)
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: sigmoid_focal_loss(
            t, labels, alpha=0.25, gamma=gamma, reduction=reduction, backend=backend
        ),
        (x,),
    )


def test_int32_labels_and_noncontiguous_logits(eager_cpu):
    x, labels = make_case(33, 4, seed=17)
    expected = sigmoid_focal_loss_reference(x, labels)
    torch.testing.assert_close(sigmoid_focal_loss(x, labels.int(), backend="cpu"), expected)
    xt = x.t().contiguous().t()  # same values, column-major strides
    assert not xt.is_contiguous()
    loss, grad = loss_and_grad(sigmoid_focal_loss, xt, labels, "sum", backend="cpu")
    torch.testing.assert_close(loss, expected)
    assert grad.shape == x.shape


def test_backward_twice_and_empty_batch(eager_cpu):
    """The saved gradient is not modified by backward (retain_graph works); N = 0 gives a 0 loss."""
    x, labels = make_case(20, 3, seed=19)
    x.requires_grad_()
    loss = sigmoid_focal_loss(x, labels, backend="cpu") * 2.0
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(g1, g2)
    empty = torch.zeros(0, 5, requires_grad=True)
    out = sigmoid_focal_loss(empty, torch.zeros(0, dtype=torch.int64), backend="cpu")
    out.backward()
    assert out.item() == 0.0 and empty.grad.shape == (0, 5)


def test_no_grad_and_labels_only_read():
    x, labels = make_case(10, 2, seed=23)
    before = labels.clone()
    with torch.no_grad():
        loss = sigmoid_focal_loss(x, labels)
    assert not loss.requires_grad and torch.equal(labels, before)


# Tolerances against the float64 reference computed from the same (rounded) logits, per element for
# reduction="none" and for the gradient: |ours - ref| <= atol + rtol * |ref|. fp32: a few ulps; fp16/bf16: the
# math is fp32 and only the final rounding to the logits' dtype counts (half an ulp: 2^-11, 2^-8 relative),
# atol covers results below the dtype's smallest normal (denormal fp32 around |x| = 88-100, fp16 underflow).
# For gamma not in {0, 1, 2}, q^gamma = exp(gamma log q) has a relative error of |gamma log q| ulps, at most
# ~88 ulps (1e-5) while the result is a normal fp32 (below, atol covers it): fp32 gets rtol 1e-5 there.
# Loss sums (fp32 accumulation of N*C terms) are compared relative to the total.
LOW_PRECISION_TOL = {
    torch.float32: (2e-6, 1e-37),
    torch.bfloat16: (4e-3, 1e-37),
    torch.float16: (1e-3, 6e-8),
}
FP32_POWER_RTOL = 1e-5
SUM_RTOL = 1e-5


def low_precision_tol(dtype: torch.dtype, gamma: float) -> tuple[float, float]:
    rtol, atol = LOW_PRECISION_TOL[dtype]
    if dtype == torch.float32 and gamma not in (0.0, 1.0, 2.0):
        rtol = FP32_POWER_RTOL
    return rtol, atol


def extreme_case(n: int, c: int, seed: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """make_case plus a sweep over the whole range [-100, 100] (tiny e = exp(-|x|) included)."""
    x, labels = make_case(n, c, seed=seed)
    k = min(x.numel(), 401)
    x.view(-1)[:k] = torch.linspace(-100.0, 100.0, k, dtype=torch.float64)
    return x.to(dtype), labels


def check_low_precision(x, labels, alpha, gamma, reduction, backend="cpu", seed=0):
    """Loss and gradient of ``x`` (any dtype) against the float64 reference within LOW_PRECISION_TOL."""
    gen = torch.Generator().manual_seed(seed)
    go = None
    if reduction == "none":  # a random upstream gradient, rounded to the logits' dtype for both sides
        go = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
    ref, g_ref = loss_and_grad(
        sigmoid_focal_loss_reference,
        x.double(),
        labels,
        reduction,
        None if go is None else go.double(),
        alpha=alpha,
        gamma=gamma,
    )
    loss, grad = loss_and_grad(
        sigmoid_focal_loss, x, labels, reduction, go, alpha=alpha, gamma=gamma, backend=backend
    )
    rtol, atol = low_precision_tol(x.dtype, gamma)
    assert grad.dtype == x.dtype
    if reduction == "none":
        assert loss.dtype == x.dtype
        torch.testing.assert_close(loss.double(), ref, rtol=rtol, atol=atol)
        # the gradient times grad_out is rounded twice (the gradient, then the product)
        torch.testing.assert_close(grad.double(), g_ref, rtol=2 * rtol, atol=atol)
    else:
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss.double(), ref, rtol=SUM_RTOL, atol=1e-30)
        torch.testing.assert_close(grad.double(), g_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_fused_math_every_dtype_whole_range(eager_cpu, dtype, gamma, alpha):
    """The fused math (exp and log only, no log1p) against float64 over |logit| <= 100, C = 20 and C = 1."""
    for n, c in ((40, 20), (500, 1)):
        x, labels = extreme_case(n, c, seed=n + c, dtype=dtype)
        for reduction in ("sum", "mean"):
            check_low_precision(x, labels, alpha, gamma, reduction)
        ref = sigmoid_focal_loss_reference(x.double(), labels, alpha, gamma, "none")
        ours = sigmoid_focal_loss(x, labels, alpha, gamma, "none", backend="cpu")
        rtol, atol = low_precision_tol(dtype, gamma)
        torch.testing.assert_close(ours.double(), ref, rtol=rtol, atol=atol)


def test_log1p_of_tiny_e_is_corrected():
    """log(1 + e) alone loses log p_t for small e (|x| > 8): the first-order correction restores it to an ulp.
    A well-classified positive at x = 15 has loss -log(sigmoid(15)) = 3.059e-7 (float64)."""
    x = torch.tensor([[15.0, -30.0]], dtype=torch.float32)
    labels = torch.tensor([0])
    loss = sigmoid_focal_loss(x, labels, alpha=None, gamma=0.0, reduction="none", backend="cpu")
    expected = -torch.nn.functional.logsigmoid(torch.tensor([15.0, 30.0], dtype=torch.float64))
    torch.testing.assert_close(loss[0].double(), expected, rtol=2e-7, atol=0)
    naive = torch.log(1.0 + torch.exp(torch.tensor(-15.0)))
    assert abs(naive.item() - expected[0].item()) > 0.05 * expected[0].item()  # what the correction fixes


def _largest_allocations(calls: dict) -> dict:
    """Bytes of the largest single CPU allocation made by each of ``calls`` (name -> zero-argument function),
    from one torch.profiler memory profile (starting the profiler costs seconds)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for name, fn in calls.items():
            with record_function(f"probe:{name}"):
                fn()
    events = prof.events()
    largest = {}
    for name in calls:
        (region,) = [e for e in events if e.name == f"probe:{name}"]
        inside = [
            e.self_cpu_memory_usage
            for e in events
            if region.time_range.start <= e.time_range.start <= region.time_range.end
        ]
        largest[name] = max(inside, default=0)
    return largest


@pytest.mark.parametrize("compiled", (False, pytest.param(True, marks=pytest.mark.slow)))
def test_no_gradient_computed_without_grad(monkeypatch, one_thread, compiled):
    """Under no_grad, or for logits that do not require grad, no [N, C] buffer is allocated at all (the
    largest allocation stays far below N*C*4 bytes); with a gradient, one is (so the probe can fail)."""
    if compiled and not focal._compiled_cpu.enabled:
        pytest.skip("torch.compile disabled (FOCALDET_NO_COMPILE or an earlier compile failure)")
    monkeypatch.setattr(focal._compiled_cpu, "enabled", compiled)
    x, labels = make_case(120_000, 20, seed=29, dtype=torch.float32, scale=4.0)
    grad_bytes = x.numel() * 4
    xg = x.clone().requires_grad_()
    expected = {r: sigmoid_focal_loss(x, labels, reduction=r, backend="cpu") for r in ("sum", "mean")}
    calls = focal._compiled_cpu.calls

    def under_no_grad(reduction):
        with torch.no_grad():
            out = sigmoid_focal_loss(xg, labels, reduction=reduction)
        torch.testing.assert_close(out, expected[reduction])

    probes = {
        "no_grad_sum": lambda: under_no_grad("sum"),
        "no_grad_mean": lambda: under_no_grad("mean"),
        "no_requires_grad": lambda: sigmoid_focal_loss(x, labels, reduction="mean"),
        "with_grad": lambda: sigmoid_focal_loss(xg, labels, reduction="sum").backward(),
    }
    largest = _largest_allocations(probes)
    assert largest["with_grad"] >= grad_bytes, largest
    for name in ("no_grad_sum", "no_grad_mean", "no_requires_grad"):
        assert largest[name] < grad_bytes / 4, (name, largest)
    assert (focal._compiled_cpu.calls - calls == 4) == compiled


@pytest.mark.slow
def test_compiled_cpu_many_variants_no_fallback_bounded_recompiles():
    """The compiled loop against float64 for many (gamma, alpha, dtype, shape) variants, as a sweep or a loss
    ablation grid in one process calls it: every call is served compiled (no eager fallback, no warning) and
    each variant function holds at most one graph per dtype (alpha, gamma and shapes never recompile)."""
    if not focal._compiled_cpu.enabled:
        pytest.skip("torch.compile disabled (FOCALDET_NO_COMPILE or an earlier compile failure)")
    calls = focal._compiled_cpu.calls
    n_calls = 0
    with _no_warning():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for gamma in (0.5, 1.5, 2.0, 3.0, 5.0):
                shapes = ((300, 20), (5000, 1), (1500, 3), (60, 80))
                for alpha, (n, c) in zip((None, 0.1, 0.25, 0.9), shapes, strict=True):
                    x, labels = extreme_case(n, c, seed=int(gamma * 10) + n, dtype=dtype)
                    check_low_precision(x, labels, alpha, gamma, "sum" if n % 2 else "mean")
                    n_calls += 1
    assert focal._compiled_cpu.calls - calls == n_calls
    code = {key: fn._torchdynamo_orig_callable.__code__ for key, fn in focal._compiled_cpu._cache.items()}
    graphs = {key: len(torch._dynamo.eval_frame._debug_get_cache_entry_list(c)) for key, c in code.items()}
    assert all(n <= 3 for n in graphs.values()), graphs  # one per dtype at most
    assert graphs[(3, False, True, torch.get_num_threads())] == 3, graphs  # gamma 0.5-5, every alpha: 3


@pytest.mark.slow
def test_compiled_cpu_per_element_matches_reference():
    """reduction="none" compiled (its own variant function): per-element loss and gradient vs float64."""
    if not focal._compiled_cpu.enabled:
        pytest.skip("torch.compile disabled (FOCALDET_NO_COMPILE or an earlier compile failure)")
    calls = focal._compiled_cpu.calls
    with _no_warning():
        for dtype in (torch.float32, torch.bfloat16):
            x, labels = extreme_case(400, 20, seed=31, dtype=dtype)
            check_low_precision(x, labels, 0.25, 2.0, "none")
    assert focal._compiled_cpu.calls - calls == 2


class _no_warning:
    """Fail if the compiled path silently fell back to eager (it warns when it does)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self._log = self._ctx.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        fallbacks = [w for w in self._log if "torch.compile of the fused CPU loss failed" in str(w.message)]
        assert not fallbacks, fallbacks[0].message
        return False


@pytest.mark.parametrize("backend", ("cpu", "reference", "auto"))
@pytest.mark.parametrize("bad", (3, 7, -3))
def test_bad_labels_raise_naming_the_value(backend, bad):
    x = torch.randn(6, 3)
    labels = torch.tensor([0, 1, bad, -1, -2, 2])
    with pytest.raises(ValueError, match=rf"value\(s\) {bad}\b"):
        sigmoid_focal_loss(x, labels, backend=backend)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"logits": torch.randn(4)}, ValueError, "2-D"),
        ({"logits": torch.randn(4, 3).int()}, TypeError, "float16, bfloat16"),
        ({"labels": torch.zeros(5, dtype=torch.int64)}, ValueError, "length N=4"),
        ({"labels": torch.zeros(4, 1, dtype=torch.int64)}, ValueError, "1-D"),
        ({"labels": torch.zeros(4)}, TypeError, "int32 or int64"),
        ({"logits": torch.randn(4, 0)}, ValueError, "C=0"),
        ({"alpha": 1.5}, ValueError, "alpha"),
        ({"alpha": -0.1}, ValueError, "alpha"),
        ({"gamma": -1.0}, ValueError, "gamma"),
        ({"gamma": float("nan")}, ValueError, "gamma"),
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"backend": "gpu"}, ValueError, "backend"),
        ({"labels": [0, 1, 2, 0]}, TypeError, "tensors"),
    ],
)
def test_bad_arguments_give_clear_errors(kwargs, exc, match):
    args = {"logits": torch.randn(4, 3), "labels": torch.tensor([0, 1, -1, -2])} | kwargs
    with pytest.raises(exc, match=match):
        sigmoid_focal_loss(**args)


def test_triton_backend_on_cpu_needs_the_interpreter():
    from detector.losses import focal_triton

    if focal_triton.interpreter_enabled():
        pytest.skip("this process runs Triton in interpreter mode")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        sigmoid_focal_loss(torch.randn(4, 3), torch.tensor([0, 1, -1, -2]), backend="triton")
