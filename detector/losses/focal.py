"""Sigmoid focal loss over integer labels, computing the loss and its gradient in one fused pass.

Labels are 0-based: ``c in [0, C)`` makes class ``c`` positive and every other class negative, ``-1`` makes
the row all-negative (background) and ``-2`` ignores the row (no loss, zero gradient). No one-hot target is
built.

Backends: ``"triton"`` (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``), ``"cpu"`` (one ``torch.compile``-d
loop when a C++ compiler is available, else a chunked eager path), ``"reference"`` (plain PyTorch with
autograd, kept for tests) and ``"auto"`` (Triton on CUDA, the fused CPU path elsewhere).

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
# Fused math: loss and gradient from one read of the logits (shared by the eager and compiled CPU paths).
# ------------------------------------------------------------------------------------------------------------


def focal_terms(
    x: torch.Tensor, labels: torch.Tensor, alpha: float | None, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element focal loss and gradient dFL/dx for logits ``x [n, C]`` (float32 math, float64 for float64).

    With z = x for the positive class and -x otherwise, e = exp(-|z|), p_t = sigmoid(z), q = 1 - p_t:
    log p_t = min(z, 0) - log1p(e), log q = min(-z, 0) - log1p(e), FL = -a_t q^g log p_t and
    dFL/dx = s a_t q^g (g p_t log p_t - q) with s = +1 for the positive class, -1 otherwise (BACKGROUND.md).
    gamma = 0 uses q^0 = 1 exactly; ignored rows get a_t = 0.
    """
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(compute_dtype)
    classes = torch.arange(x.shape[1], device=x.device)
    lab = labels[:, None]
    positive = lab == classes[None, :]
    z = torch.where(positive, x, -x)
    e = torch.exp(-z.abs())
    log1p_e = torch.log1p(e)
    r = 1.0 / (1.0 + e)
    nonneg = z >= 0
    p_t = torch.where(nonneg, r, e * r)
    q = torch.where(nonneg, e * r, r)
    log_pt = torch.clamp(z, max=0.0) - log1p_e
    if alpha is None:
        a_t = (lab != IGNORE).to(compute_dtype)
    else:
        # arithmetic rather than torch.where(positive, alpha, 1 - alpha): keeps alpha a runtime scalar under
        # torch.compile instead of a recompile per value
        a_t = ((1.0 - alpha) + (2.0 * alpha - 1.0) * positive.to(compute_dtype)) * (lab != IGNORE)
    s_a_t = torch.where(positive, a_t, -a_t)
    if gamma == 0:
        loss = -a_t * log_pt
        grad = -s_a_t * q
    else:
        if gamma == 1:
            w = q
        elif gamma == 2:
            w = q * q
        else:
            w = torch.exp(gamma * (torch.clamp(-z, max=0.0) - log1p_e))
        loss = -a_t * w * log_pt
        grad = s_a_t * w * (gamma * p_t * log_pt - q)
    return loss, grad


def _fused_sum(
    x: torch.Tensor, labels: torch.Tensor, alpha: float | None, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss sum and gradient (in x's dtype): the function ``torch.compile`` turns into one loop."""
    loss, grad = focal_terms(x, labels, alpha, gamma)
    return loss.sum(), grad.to(x.dtype)


def _fused_none(
    x: torch.Tensor, labels: torch.Tensor, alpha: float | None, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element loss and gradient, both in x's dtype."""
    loss, grad = focal_terms(x, labels, alpha, gamma)
    return loss.to(x.dtype), grad.to(x.dtype)


def _eager_cpu(
    x: torch.Tensor, labels: torch.Tensor, alpha: float | None, gamma: float, elementwise: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused math in row chunks that fit in cache: no full-size temporaries besides the outputs."""
    n, c = x.shape
    grad = torch.empty_like(x, memory_format=torch.contiguous_format)
    loss_out = torch.empty_like(grad) if elementwise else None
    partials = []
    rows = max(1, _EAGER_CHUNK_ELEMENTS // c)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        loss, g = focal_terms(x[start:stop], labels[start:stop], alpha, gamma)
        grad[start:stop] = g
        if loss_out is not None:
            loss_out[start:stop] = loss
        else:
            partials.append(loss.sum())
    if loss_out is not None:
        return loss_out, grad
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    total = torch.stack(partials).sum() if partials else torch.zeros((), dtype=acc_dtype, device=x.device)
    return total, grad


class _CompiledCPU:
    """Lazily ``torch.compile``-d fused CPU functions, one per reduction kind (sum or per-element).

    alpha and gamma reach the compiled loop as runtime scalars (dynamo does not specialize floats), so a new
    value does not recompile; a new dtype, alpha=None or gamma in {0, 1, 2} (cheaper branches) does.

    ``dynamic=True`` keeps one compiled graph for every N and C; the first call of each variant compiles
    (seconds; inductor's on-disk cache makes later processes faster). If compilation fails (no C++ compiler,
    an unsupported platform) a warning is given once and the eager chunked path is used from then on
    (``enabled`` becomes False). ``FOCALDET_NO_COMPILE=1`` skips compilation altogether. float64 (used for
    gradcheck) always takes the eager path.
    """

    def __init__(self) -> None:
        self._cache: dict[bool, Callable] = {}
        self._lock = threading.Lock()
        self.enabled = os.environ.get("FOCALDET_NO_COMPILE", "") in ("", "0")

    def __call__(
        self, x: torch.Tensor, labels: torch.Tensor, alpha: float | None, gamma: float, elementwise: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():  # traced inside a user's compiled graph: inductor fuses it there
            return (_fused_none if elementwise else _fused_sum)(x, labels, alpha, gamma)
        if not self.enabled or x.dtype == torch.float64 or x.numel() == 0:
            return _eager_cpu(x, labels, alpha, gamma, elementwise)
        fn = self._cache.get(elementwise)
        if fn is None:
            with self._lock:
                fn = self._cache.get(elementwise)
                if fn is None:
                    base = _fused_none if elementwise else _fused_sum
                    fn = torch.compile(base, dynamic=True, fullgraph=True)
                    self._cache[elementwise] = fn
        try:
            return fn(x.contiguous(), labels, alpha, gamma)
        except Exception as exc:  # compile errors surface at the first call
            self.enabled = False
            warnings.warn(
                "sigmoid_focal_loss: torch.compile of the fused CPU loss failed "
                f"({type(exc).__name__}: {exc}); using the eager chunked path from now on",
                RuntimeWarning,
                stacklevel=3,
            )
            return _eager_cpu(x, labels, alpha, gamma, elementwise)


_compiled_cpu = _CompiledCPU()


def _cpu_forward(
    x: torch.Tensor, labels: torch.Tensor, alpha: float | None, gamma: float, elementwise: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused CPU path (also used for tensors on devices other than CUDA)."""
    check_labels(labels, x.shape[1])
    return _compiled_cpu(x, labels, alpha, gamma, elementwise)


def _triton_forward(
    x: torch.Tensor, labels: torch.Tensor, alpha: float | None, gamma: float, elementwise: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton kernel path: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""
    from detector.losses import focal_triton

    if x.device.type == "cuda":
        loss, grad, bad_flag = focal_triton.focal_loss_fwd(x, labels, alpha, gamma, elementwise)
        torch._assert_async(bad_flag == 0, "sigmoid_focal_loss: a label is outside [-2, C)")
        return loss, grad
    if not focal_triton.interpreter_enabled():
        raise RuntimeError(
            "sigmoid_focal_loss: backend='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 "
            f"set before triton is imported; got {x.device} tensors. Use backend='cpu' or 'auto' on the CPU."
        )
    check_labels(labels, x.shape[1])
    loss, grad, _ = focal_triton.focal_loss_fwd(x, labels, alpha, gamma, elementwise)
    return loss, grad


class _FusedFocalLoss(torch.autograd.Function):
    """Forward computes the loss and the gradient together; backward scales that gradient in place.

    The gradient is kept on ``ctx`` (not ``save_for_backward``) so the first backward can hand it over as the
    result, scaled in place: the only ``[N, C]`` buffer besides the logits is that one gradient. A second
    backward through the same graph (``retain_graph=True``) recomputes it from the saved logits.
    """

    @staticmethod
    def forward(ctx, logits, labels, alpha, gamma, reduction, forward_fn):  # type: ignore[override]
        elementwise = reduction == "none"
        loss, grad = forward_fn(logits.detach(), labels, alpha, gamma, elementwise)
        scale = None
        if reduction == "mean":
            scale = 1.0 / ((labels != IGNORE).sum() * logits.shape[1]).clamp(min=1).to(loss.dtype)
            loss = loss * scale
        ctx.save_for_backward(logits, labels)
        ctx.grad, ctx.scale = grad, scale
        ctx.args = (alpha, gamma, elementwise, forward_fn)
        ctx.mark_non_differentiable(labels)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        logits, labels = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        if grad is None:  # a second backward (retain_graph=True): recompute the gradient
            alpha, gamma, elementwise, forward_fn = ctx.args
            _, grad = forward_fn(logits.detach(), labels, alpha, gamma, elementwise)
        if ctx.scale is not None:
            grad_output = grad_output * ctx.scale
        grad.mul_(grad_output.to(grad.dtype))
        return grad, None, None, None, None, None


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
    CE, alpha-CE and FL are all this one function. See the module docstring for labels, reductions and
    backends.
    """
    _check_args(logits, labels, alpha, gamma, reduction, backend)
    alpha = None if alpha is None else float(alpha)
    gamma = float(gamma)
    if backend == "reference":
        return sigmoid_focal_loss_reference(logits, labels, alpha, gamma, reduction)
    if backend == "cpu" and logits.device.type == "cuda":
        raise ValueError("sigmoid_focal_loss: backend='cpu' got CUDA tensors; use 'auto' or 'triton'")
    if backend == "triton" or (backend == "auto" and logits.device.type == "cuda"):
        forward_fn = _triton_forward
    else:
        forward_fn = _cpu_forward
    return _FusedFocalLoss.apply(logits, labels, alpha, gamma, reduction, forward_fn)
