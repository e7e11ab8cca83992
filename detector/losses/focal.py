"""Sigmoid focal loss over integer labels, computing the loss and its gradient in one fused pass.

Labels are 0-based: ``c in [0, C)`` makes class ``c`` positive and every other class negative, ``-1`` makes
the row all-negative (background) and ``-2`` ignores the row (no loss, zero gradient). No one-hot target is
built.

Backends: ``"triton"`` (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``), ``"cpu"`` (one ``torch.compile``-d
vectorized loop over the flat N*C elements when a C++ compiler is available, else a chunked eager path; both
use exp and log only, never log1p, whose speed varies 20x between processes), ``"reference"`` (plain PyTorch
with autograd, kept for tests) and ``"auto"`` (Triton on CUDA, the fused CPU path elsewhere). Under
``torch.no_grad()``, or for logits that do not require grad, only the loss is computed.

Reductions: ``"sum"`` and ``"mean"`` return a 0-dim tensor in float32 (float64 for float64 logits) whatever
the logits' dtype, since half-precision sums of ~10^7 terms lose too much; ``"mean"`` divides by the number of
non-ignored elements (rows with label != -2, times C), like ``cross_entropy``'s ``ignore_index``. ``"none"``
returns the ``[N, C]`` per-element loss in the logits' dtype.

Label checking: on CPU the labels are checked on the host (one pass over N labels) and a bad value raises
``ValueError`` naming it. On CUDA that check would cost a device sync every step, so the Triton kernel flags
bad labels itself (their rows get NaN loss and gradient) and ``torch._assert_async`` raises without a sync,
the same trade PyTorch makes for out-of-range class indices in ``cross_entropy``.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE = -2
BACKGROUND = -1
REDUCTIONS = ("sum", "mean", "none")
BACKENDS = ("auto", "triton", "cpu", "reference")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LABEL_DTYPES = (torch.int32, torch.int64)
# Elements per chunk of the eager CPU path: the temporaries of one chunk stay in the L2 cache.
_EAGER_CHUNK_ELEMENTS = 1 << 18
# Smaller inputs take the eager path: compiling pays off only for large ones, and a size of 0 or 1 would make
# dynamo specialize (one more graph per variant).
_MIN_COMPILED_ELEMENTS = 4096


# ------------------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------------------


def _check_args(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float | None,
    gamma: float,
    reduction: str,
    backend: str,
) -> None:
    """Raise a clear error for a bad shape, dtype, device or hyper-parameter (cheap: no pass over the
    data)."""
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"sigmoid_focal_loss: logits and labels must be tensors, got {type(logits).__name__} and "
            f"{type(labels).__name__}"
        )
    if logits.dim() != 2:
        raise ValueError(f"sigmoid_focal_loss: logits must be 2-D [N, C], got shape {tuple(logits.shape)}")
    if logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"sigmoid_focal_loss: logits must be float16, bfloat16, float32 or float64, got {logits.dtype}"
        )
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"sigmoid_focal_loss: labels must be 1-D of length N={logits.shape[0]}, "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.dtype not in _LABEL_DTYPES:
        raise TypeError(f"sigmoid_focal_loss: labels must be int32 or int64, got {labels.dtype}")
    if labels.device != logits.device:
        raise ValueError(
            f"sigmoid_focal_loss: labels are on {labels.device} but logits are on {logits.device}"
        )
    if logits.shape[1] == 0:
        raise ValueError("sigmoid_focal_loss: logits have C=0 classes")
    if alpha is not None and not (isinstance(alpha, (int, float)) and 0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"sigmoid_focal_loss: alpha must be None or a number in [0, 1], got {alpha!r}")
    if not isinstance(gamma, (int, float)) or not float(gamma) >= 0.0 or float(gamma) == float("inf"):
        raise ValueError(f"sigmoid_focal_loss: gamma must be a finite number >= 0, got {gamma!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"sigmoid_focal_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if backend not in BACKENDS:
        raise ValueError(f"sigmoid_focal_loss: backend must be one of {BACKENDS}, got {backend!r}")


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` naming the offending values if a label is outside ``[-2, num_classes)``.

    One pass over the N labels plus a host read of the result: cheap on CPU, a device sync on CUDA (which is
    why the CUDA path checks inside the kernel instead).
    """
    bad = (labels < IGNORE) | (labels >= num_classes)
    if bool(bad.any()):
        values = torch.unique(labels[bad]).tolist()
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise ValueError(
            f"sigmoid_focal_loss: labels must be in [0, {num_classes}) for a positive class, "
            f"-1 for all-negative or -2 for ignore; got {int(bad.sum())} bad label(s) with value(s) {shown}"
        )


# ------------------------------------------------------------------------------------------------------------
# Reference (plain PyTorch, autograd gradient): the independent check the fused paths are tested against.
# ------------------------------------------------------------------------------------------------------------


def sigmoid_focal_loss_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """Plain PyTorch focal loss (one-hot mask, autograd backward); same conventions as ``sigmoid_focal_loss``.

    ``(1 - p_t)^gamma`` is computed as ``exp(gamma * logsigmoid(-z))`` so that its autograd gradient stays
    finite for |logit| up to 100 and any gamma >= 0 (``(1 - p_t) ** gamma`` gives NaN gradients when ``1 -
    p_t`` rounds to 0 and gamma < 1). Computes in float32, or float64 for float64 logits.
    """
    _check_args(logits, labels, alpha, gamma, reduction, "reference")
    check_labels(labels, logits.shape[1])
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(compute_dtype)
    classes = torch.arange(logits.shape[1], device=logits.device)
    positive = labels[:, None] == classes[None, :]
    z = torch.where(positive, x, -x)
    log_pt = F.logsigmoid(z)
    modulating = torch.exp(gamma * F.logsigmoid(-z)) if gamma != 0 else torch.ones_like(z)
    loss = -modulating * log_pt
    if alpha is not None:
        loss = loss * torch.where(positive, alpha, 1.0 - alpha)
    valid = (labels != IGNORE)[:, None]
    loss = loss * valid
    return _reduce(loss, valid, reduction, logits.dtype)


def _reduce(
    loss: torch.Tensor, valid: torch.Tensor, reduction: str, logits_dtype: torch.dtype
) -> torch.Tensor:
    """Apply the reduction convention of the module docstring to a per-element loss."""
    if reduction == "none":
        return loss.to(logits_dtype)
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / (valid.sum() * loss.shape[1]).clamp(min=1)


# ------------------------------------------------------------------------------------------------------------
# Fused math: loss and gradient from one read of the logits, over the flat N*C elements (shared by the eager
# and compiled CPU paths). Only exp, log and a division: no log1p, whose library speed varies 20x from process
# to process on some machines (docs/benchmarks.md).
# ------------------------------------------------------------------------------------------------------------

GAMMA_MODES = {0.0: 0, 1.0: 1, 2.0: 2}  # cheaper branches; any other gamma is mode 3 (one more exp)


def gamma_mode(gamma: float) -> int:
    """0, 1, 2 for gamma 0, 1, 2 (q^gamma without an exp), 3 for any other gamma."""
    return GAMMA_MODES.get(float(gamma), 3)


def alpha_pair(alpha: float | None) -> tuple[float, float]:
    """(alpha_t for positives, alpha_t for negatives): alpha=None weighs both by 1."""
    return (1.0, 1.0) if alpha is None else (float(alpha), 1.0 - float(alpha))


def flat_labels(labels: torch.Tensor, num_classes: int, start: int, stop: int, compute_dtype: torch.dtype):
    """Row label and column of the flat elements ``start:stop`` of an ``[N, C]`` matrix (row = i // C).

    The division is done in float64 ((i + 0.5) / C, exact for N*C < 2^50), so that a compiled loop stays
    vectorized: 64-bit integer division by a runtime C is a scalar instruction of ~40 cycles per element. Row
    indices are int32 below 2^31 rows (a vector conversion on AVX2; int64 is not, 17% slower).
    """
    idx = torch.arange(start, stop, device=labels.device, dtype=torch.float64)
    row = torch.floor((idx + 0.5) * (1.0 / num_classes))
    lab = labels[row.int() if labels.shape[0] < 2**31 else row.long()]
    col = (idx - row * num_classes).to(compute_dtype)
    return lab, col


def focal_elements(
    x: torch.Tensor,
    lab: torch.Tensor,
    col: torch.Tensor,
    alpha_pos,
    alpha_neg,
    gamma,
    mode: int,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-element focal loss and (if ``need_grad``) dFL/dx for flat logits ``x`` with row labels ``lab``.

    With z = x for the positive class and -x otherwise, e = exp(-|x|), u = 1 + e, r = 1/u, p_t = sigmoid(z),
    q = 1 - p_t: log1p(e) = log(u) - ((u - 1) - e) r (the rounding error of u corrected to first order, which
    keeps log p_t accurate to an ulp for tiny e), log p_t = min(z, 0) - log1p(e), FL = -a_t q^g log p_t and
    dFL/dx = s a_t q^g (g p_t log p_t - q), s = +1 for the positive class, -1 otherwise (derived in the
    focal-loss paper, Lin et al. 2017, appendix A).
    ``x`` is already in the compute dtype; alpha_pos/alpha_neg/gamma are floats or 0-dim tensors; ignored
    rows (label -2) get a_t = 0.
    """
    positive = lab == col
    z = torch.where(positive, x, -x)
    e = torch.exp(-x.abs())
    u = 1.0 + e
    r = 1.0 / u
    log1p_e = torch.log(u) - ((u - 1.0) - e) * r
    nonneg = z >= 0
    q = torch.where(nonneg, e * r, r)
    log_pt = torch.clamp(z, max=0.0) - log1p_e
    a_t = torch.where(lab == IGNORE, 0.0, torch.where(positive, alpha_pos, alpha_neg).to(x.dtype))
    if mode == 0:
        w = None
        loss = -a_t * log_pt
    else:
        if mode == 1:
            w = q
        elif mode == 2:
            w = q * q
        else:
            w = torch.exp(gamma * (torch.clamp(-z, max=0.0) - log1p_e))
        loss = -a_t * w * log_pt
    if not need_grad:
        return loss, None
    s_a_t = torch.where(positive, a_t, -a_t)
    if mode == 0:
        return loss, -s_a_t * q
    p_t = torch.where(nonneg, r, e * r)
    g = 1.0 if mode == 1 else 2.0 if mode == 2 else gamma
    return loss, s_a_t * w * (g * p_t * log_pt - q)


def _eager_cpu(
    x: torch.Tensor, labels: torch.Tensor, params: torch.Tensor, mode: int, elementwise: bool, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused math in flat chunks that fit in cache: no full-size temporaries besides the outputs."""
    n, c = x.shape
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    flat = x.reshape(-1)
    grad = torch.empty(n * c, dtype=x.dtype, device=x.device) if need_grad else None
    loss_out = torch.empty(n * c, dtype=x.dtype, device=x.device) if elementwise else None
    partials = []
    alpha_pos, alpha_neg, gamma, grad_scale = params.to(compute_dtype).unbind()
    for start in range(0, n * c, _EAGER_CHUNK_ELEMENTS):
        stop = min(n * c, start + _EAGER_CHUNK_ELEMENTS)
        lab, col = flat_labels(labels, c, start, stop, compute_dtype)
        loss, g = focal_elements(
            flat[start:stop].to(compute_dtype), lab, col, alpha_pos, alpha_neg, gamma, mode, need_grad
        )
        if grad is not None:
            grad[start:stop] = g * grad_scale
        if loss_out is not None:
            loss_out[start:stop] = loss
        else:
            partials.append(loss.sum())
    grad = None if grad is None else grad.view(n, c)
    if loss_out is not None:
        return loss_out.view(n, c), grad
    total = torch.stack(partials).sum() if partials else torch.zeros((), dtype=compute_dtype, device=x.device)
    return total, grad


def _compiled_body(
    flat: torch.Tensor,
    labels: torch.Tensor,
    params: torch.Tensor,
    mode: int,
    elementwise: bool,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What ``torch.compile`` turns into one vectorized loop over the N*C flat elements.

    Takes the logits flat (length N*C >= ``_MIN_COMPILED_ELEMENTS``) so that no size is 0 or 1 and dynamo
    never specializes on one; C is ``len(flat) // len(labels)``.
    """
    n = labels.shape[0]
    c = flat.shape[0] // n
    lab, col = flat_labels(labels, c, 0, flat.shape[0], torch.float32)
    alpha_pos, alpha_neg, gamma = params[0], params[1], params[2]
    loss, grad = focal_elements(flat.float(), lab, col, alpha_pos, alpha_neg, gamma, mode, need_grad)
    loss = loss.to(flat.dtype) if elementwise else loss.sum()
    return loss, (None if grad is None else (grad * params[3]).to(flat.dtype))


def _variant_function(mode: int, elementwise: bool, need_grad: bool) -> Callable:
    """A function with its own code object for one (gamma mode, output kind): dynamo keeps compiled graphs
    (and counts recompiles against its limit of 8) per code object, so the 16 variants share no budget."""

    def body(flat, labels, params):
        return _compiled_body(flat, labels, params, mode, elementwise, need_grad)

    name = f"_focal_cpu_mode{mode}_{'none' if elementwise else 'sum'}_{'grad' if need_grad else 'loss'}"
    body.__code__ = body.__code__.replace(co_name=name, co_qualname=name)
    body.__name__ = body.__qualname__ = name
    return body


class _CompiledCPU:
    """Lazily ``torch.compile``-d fused CPU loops, one per (gamma mode, reduction kind, gradient or not).

    What recompiles, and why it stays bounded: alpha and gamma reach the loop as one float64 tensor (values
    never recompile); labels are made int32 and the logits are passed flat with N*C >= 4096 elements and
    N >= 2, so only the logits' dtype is left to specialize on: at most 3 graphs (fp32, fp16, bf16) per
    variant function, well under dynamo's recompile limit of 8. Each of the 16 variants, for each intra-op
    thread count used (dynamo guards on it), is its own code object (``_variant_function``). The first call
    of a variant compiles (seconds; inductor's FX graph cache on disk makes later processes faster, see
    docs/benchmarks.md). Small inputs (under 4096 elements, or one row) and float64 (gradcheck) take the
    eager chunked path. If compilation fails (no C++ compiler, an
    unsupported platform) a warning is given once and the eager path is used from then on (``enabled``
    becomes False). ``FOCALDET_NO_COMPILE=1`` skips compilation altogether.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[int, bool, bool, int], Callable] = {}
        self._lock = threading.Lock()
        self.enabled = os.environ.get("FOCALDET_NO_COMPILE", "") in ("", "0")
        self.calls = 0  # calls served by a compiled loop (tests check that no variant fell back)

    def compiled(self, key: tuple[int, bool, bool, int]) -> Callable:
        fn = self._cache.get(key)
        if fn is None:
            with self._lock:
                fn = self._cache.get(key)
                if fn is None:
                    # ATen dispatched without vector kernels (ATEN_CPU_CAPABILITY=default): inductor's
                    # vectorized C++ then fails to build (its headers lack at::vec), so ask for scalar code
                    scalar = torch.backends.cpu.get_cpu_capability() == "DEFAULT"
                    options = {"cpp.simdlen": 1} if scalar else None
                    fn = torch.compile(
                        _variant_function(*key[:3]), dynamic=True, fullgraph=True, options=options
                    )
                    self._cache[key] = fn
        return fn

    def __call__(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        params: torch.Tensor,
        mode: int,
        elementwise: bool,
        need_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, c = x.shape
        # detach(): a flat tensor with no ``_base``, so dynamo sees only its length (not C, which it would
        # specialize when 1)
        flat = x.contiguous().view(-1).detach()
        if torch.compiler.is_compiling():  # traced inside a user's compiled graph: inductor fuses it there
            loss, grad = _compiled_body(flat, labels, params, mode, elementwise, need_grad)
        elif not self.enabled or x.dtype == torch.float64 or n < 2 or n * c < _MIN_COMPILED_ELEMENTS:
            return _eager_cpu(x, labels, params, mode, elementwise, need_grad)
        else:
            # no_grad always (dynamo guards on grad mode) and one variant function per thread count (it guards
            # on that too, and DataLoader workers or a benchmark may change it)
            key = (mode, elementwise, need_grad, torch.get_num_threads())
            try:
                with torch.no_grad():
                    loss, grad = self.compiled(key)(flat, _index_labels(labels), params)
            except Exception as exc:  # compile errors surface at the first call
                self.enabled = False
                warnings.warn(
                    "sigmoid_focal_loss: torch.compile of the fused CPU loss failed "
                    f"({type(exc).__name__}: {exc}); using the eager chunked path from now on",
                    RuntimeWarning,
                    stacklevel=4,
                )
                return _eager_cpu(x, labels, params, mode, elementwise, need_grad)
            self.calls += 1
        if elementwise:
            loss = loss.view(n, c)
        return loss, (None if grad is None else grad.view(n, c))


_compiled_cpu = _CompiledCPU()


def _index_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels as int32 (a vectorized gather in the compiled loop), int64 beyond 2^31 rows: one dtype per
    size class, so the compiled loop does not specialize on the caller's label dtype."""
    return labels.int() if labels.shape[0] < 2**31 else labels.long()


def _params(alpha: float | None, gamma: float, grad_scale: torch.Tensor | None) -> torch.Tensor:
    """alpha_t of positives, alpha_t of negatives, gamma and the gradient's scale as one float64 tensor:
    runtime values for a compiled loop (no recompile per value)."""
    params = torch.tensor([*alpha_pair(alpha), gamma, 1.0], dtype=torch.float64)
    if grad_scale is not None:
        params[3] = grad_scale
    return params


def _cpu_forward(
    x: torch.Tensor,
    labels: torch.Tensor,
    alpha: float | None,
    gamma: float,
    elementwise: bool,
    need_grad: bool,
    grad_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused CPU path (also used for tensors on devices other than CUDA); the gradient comes multiplied by
    ``grad_scale`` (the mean's 1 / count), so a bf16 gradient is rounded once."""
    check_labels(labels, x.shape[1])
    params = _params(alpha, gamma, grad_scale).to(x.device)
    return _compiled_cpu(x, labels, params, gamma_mode(gamma), elementwise, need_grad)


def _triton_forward(
    x: torch.Tensor,
    labels: torch.Tensor,
    alpha: float | None,
    gamma: float,
    elementwise: bool,
    need_grad: bool,
    grad_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton kernel path: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""
    from detector.losses import focal_triton

    if x.device.type != "cuda":
        if not focal_triton.interpreter_enabled():
            raise RuntimeError(
                "sigmoid_focal_loss: backend='triton' needs CUDA tensors, or CPU tensors with "
                f"TRITON_INTERPRET=1 set before triton is imported; got {x.device} tensors. Use "
                "backend='cpu' or 'auto' on the CPU."
            )
        check_labels(labels, x.shape[1])  # the interpreter is for tests: raise the host-side error
    return focal_triton.focal_loss(x, labels, alpha, gamma, elementwise, need_grad, grad_scale)


# Triton path only: "forward" computes the gradient in the forward pass and keeps it until backward (one pass
# over the logits, one [N, C] buffer held between the passes); "backward" computes the loss alone in forward
# and the already-scaled gradient in backward (reads the logits twice, rounds a bf16 gradient once, holds no
# buffer between the passes). Read at each call, so a caller (or a benchmark) can switch it.
TRITON_GRADIENT = "forward"
_GRADIENT_MODES = ("forward", "backward")


class _FusedFocalLoss(torch.autograd.Function):
    """Forward computes the loss and the gradient together; backward scales that gradient in place.

    The gradient is kept on ``ctx`` (not ``save_for_backward``) so the first backward can hand it over as the
    result, scaled in place: the only ``[N, C]`` buffer besides the logits is that one gradient. A second
    backward through the same graph (``retain_graph=True``) recomputes it from the saved logits. With
    ``grad_in_backward`` (the Triton "backward" variant) forward computes the loss only and backward computes
    the gradient, scaled, in one kernel.
    """

    @staticmethod
    def forward(ctx, logits, labels, alpha, gamma, reduction, forward_fn, grad_in_backward):  # type: ignore[override]
        elementwise = reduction == "none"
        scale = _mean_scale(labels, logits.shape[1]) if reduction == "mean" else None
        need_grad = not grad_in_backward
        loss, grad = forward_fn(logits.detach(), labels, alpha, gamma, elementwise, need_grad, scale)
        if scale is not None:
            loss = loss * scale.to(loss.dtype)
        ctx.save_for_backward(logits, labels)
        ctx.grad, ctx.scale = grad, scale
        ctx.args = (alpha, gamma, elementwise, forward_fn, grad_in_backward)
        ctx.mark_non_differentiable(labels)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        logits, labels = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None
        none = (None,) * 6
        if not ctx.needs_input_grad[0]:
            return (None, *none)
        alpha, gamma, elementwise, forward_fn, grad_in_backward = ctx.args
        if grad_in_backward:
            from detector.losses import focal_triton

            grad = focal_triton.focal_grad(logits.detach(), labels, alpha, gamma, grad_output, ctx.scale)
            return (grad, *none)
        if grad is None:  # a second backward (retain_graph=True): recompute the gradient
            _, grad = forward_fn(logits.detach(), labels, alpha, gamma, elementwise, True, ctx.scale)
        if not _is_cpu_one(grad_output):
            grad.mul_(grad_output.to(grad.dtype) if elementwise else grad_output.float())
        return (grad, *none)


def _is_cpu_one(grad_output: torch.Tensor) -> bool:
    """A CPU scalar 1 (plain ``loss.backward()``) needs no pass over the gradient. Not checked on CUDA (the
    read would sync) nor while tracing (the value is unknown then)."""
    if torch.compiler.is_compiling() or grad_output.device.type != "cpu" or grad_output.numel() != 1:
        return False
    return grad_output.item() == 1.0


def _mean_scale(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """1 / (non-ignored rows * C) in float64, at least 1 in the denominator (an all-ignored batch has loss
    0)."""
    return 1.0 / ((labels != IGNORE).sum() * num_classes).clamp(min=1).double()


def sigmoid_focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
    backend: str = "auto",
) -> torch.Tensor:
    """Focal loss FL = -alpha_t (1 - p_t)^gamma log(p_t) of ``logits [N, C]`` against integer ``labels [N]``.

    ``alpha=None`` disables alpha weighting and ``gamma=0`` gives (alpha-balanced) cross entropy exactly, so
    CE, alpha-CE and FL are all this one function. Under ``torch.no_grad()``, or for logits that do not
    require grad, no gradient is computed or allocated. See the module docstring for labels, reductions and
    backends.
    """
    _check_args(logits, labels, alpha, gamma, reduction, backend)
    alpha = None if alpha is None else float(alpha)
    gamma = float(gamma)
    if backend == "reference":
        return sigmoid_focal_loss_reference(logits, labels, alpha, gamma, reduction)
    if backend == "cpu" and logits.device.type == "cuda":
        raise ValueError("sigmoid_focal_loss: backend='cpu' got CUDA tensors; use 'auto' or 'triton'")
    triton = backend == "triton" or (backend == "auto" and logits.device.type == "cuda")
    forward_fn = _triton_forward if triton else _cpu_forward
    if not (torch.is_grad_enabled() and logits.requires_grad):
        loss, _ = forward_fn(logits.detach(), labels, alpha, gamma, reduction == "none", False)
        if reduction == "mean":
            loss = loss * _mean_scale(labels, logits.shape[1]).to(loss.dtype)
        return loss
    if TRITON_GRADIENT not in _GRADIENT_MODES:
        raise ValueError(f"sigmoid_focal_loss: TRITON_GRADIENT must be one of {_GRADIENT_MODES}")
    grad_in_backward = triton and TRITON_GRADIENT == "backward"
    return _FusedFocalLoss.apply(logits, labels, alpha, gamma, reduction, forward_fn, grad_in_backward)
