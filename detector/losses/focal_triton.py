"""Triton kernel for the fused sigmoid focal loss: one read of logits and labels, one write of the gradient.

The kernel walks the flat ``N*C`` elements (``row = i // C`` with C a compile-time constant, so the division
is a multiply-shift and the loads of each program are contiguous and vectorized); offsets are int32 unless
``N*C`` needs int64. Each program stores its partial loss sum and a bad-label flag in a cached workspace,
takes a ticket from an atomic counter, and the last program to finish adds the partials up in a fixed order
(deterministic, no float atomics), writes the loss and an "all labels valid" flag and resets the counter: one
launch per call, no zero-filling, no host-side reduction. The workspace is cached per device; calls on one
device must be stream-ordered (as one training loop is).

Registered as the custom op ``focaldet::focal_loss`` (``torch.library.custom_op`` with a fake implementation),
so ``torch.compile`` keeps it as one node and CUDA graphs capture it. ``kernel_registers()`` reports
``n_regs`` / ``n_spills`` of every compiled variant (CUDA only). Under ``TRITON_INTERPRET=1`` (CPU tensors,
CI) the same kernel runs in Triton's interpreter with a small block, so several programs and the ticket
logic are exercised.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from detector.losses.focal import alpha_pair

# (BLOCK, num_warps) candidates timed once per (C, dtype, kind) on CUDA; the interpreter uses a small block.
_CONFIGS = ((1024, 4), (2048, 8), (4096, 8))
_INTERPRET_BLOCK = 256
# Partials the last program adds per step; under the interpreter a small step so tests cover several steps.
_REDUCE_BLOCK = 1024
_INTERPRET_REDUCE_BLOCK = 8
_best: dict[tuple, tuple[int, int]] = {}
_registers: dict[str, dict[str, int]] = {}
_workspaces: dict[torch.device, dict[str, torch.Tensor]] = {}
_lock = threading.Lock()

# What the kernel writes as its loss output.
LOSS_NONE, LOSS_SUM, LOSS_ELEMENTS = 0, 1, 2


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _focal_kernel(
    x_ptr,
    labels_ptr,
    gout_ptr,
    scale_ptr,
    grad_ptr,
    loss_ptr,
    partial_ptr,
    bad_ptr,
    ticket_ptr,
    ok_ptr,
    M,
    alpha_pos,
    alpha_neg,
    gamma,
    C: tl.constexpr,
    GAMMA_MODE: tl.constexpr,  # 0: gamma == 0, 1: gamma == 1, 2: gamma == 2, 3: any other gamma
    LOSS_MODE: tl.constexpr,  # 0: no loss, 1: sum (partials + last-program reduction), 2: per element
    WRITE_GRAD: tl.constexpr,
    GOUT_MODE: tl.constexpr,  # 0: no upstream gradient, 1: a scalar, 2: one per element
    HAS_SCALE: tl.constexpr,
    CHECK: tl.constexpr,  # fold the bad-label flag (needs the ticket protocol)
    INT64: tl.constexpr,
    BLOCK: tl.constexpr,
    REDUCE_BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * BLOCK if INT64 else pid * BLOCK
    offs = start + tl.arange(0, BLOCK)
    mask = offs < M
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    row = offs // C
    col = (offs - row * C).to(tl.int32)
    lab = tl.load(labels_ptr + row, mask=mask, other=-2).to(tl.int32)
    bad = mask & ((lab < -2) | (lab >= C))
    positive = lab == col
    z = tl.where(positive, x, -x)
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    r = 1.0 / u
    # log1p(e) without a log1p routine: log(1 + e) with the rounding error of 1 + e corrected to first order
    log1p_e = tl.log(u) - ((u - 1.0) - e) * r
    nonneg = z >= 0
    q = tl.where(nonneg, e * r, r)
    log_pt = tl.minimum(z, 0.0) - log1p_e
    a_t = tl.where(positive, alpha_pos, alpha_neg)
    a_t = tl.where(lab == -2, 0.0, a_t)
    a_t = tl.where(bad, float("nan"), a_t)
    if GAMMA_MODE == 0:
        w = tl.full([BLOCK], 1.0, tl.float32)
    elif GAMMA_MODE == 1:
        w = q
    elif GAMMA_MODE == 2:
        w = q * q
    else:
        w = tl.exp(gamma * (tl.minimum(-z, 0.0) - log1p_e))
    if LOSS_MODE == 2:
        loss = -a_t * w * log_pt
        tl.store(loss_ptr + offs, loss.to(loss_ptr.dtype.element_ty), mask=mask)
    if WRITE_GRAD:
        s_a_t = tl.where(positive, a_t, -a_t)
        if GAMMA_MODE == 0:
            grad = -s_a_t * q
        else:
            p_t = tl.where(nonneg, r, e * r)
            if GAMMA_MODE == 1:
                g = 1.0
            elif GAMMA_MODE == 2:
                g = 2.0
            else:
                g = gamma
            grad = s_a_t * w * (g * p_t * log_pt - q)
        if HAS_SCALE:
            grad = grad * tl.load(scale_ptr).to(tl.float32)
        if GOUT_MODE == 1:
            grad = grad * tl.load(gout_ptr).to(tl.float32)
        elif GOUT_MODE == 2:
            grad = grad * tl.load(gout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)
    if CHECK:
        if LOSS_MODE == 1:
            partial = tl.sum(tl.where(mask, -a_t * w * log_pt, 0.0), axis=0)
            tl.store(partial_ptr + pid, partial)
        tl.store(bad_ptr + pid, tl.max(bad.to(tl.int32), axis=0))
        # The last program to take a ticket sees every other program's partials (acq_rel atomic).
        ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel")
        num = tl.num_programs(0)
        if ticket == num - 1:
            acc = tl.zeros([REDUCE_BLOCK], dtype=tl.float32)
            any_bad = tl.zeros([REDUCE_BLOCK], dtype=tl.int32)
            for start in range(0, num, REDUCE_BLOCK):
                idx = start + tl.arange(0, REDUCE_BLOCK)
                keep = idx < num
                if LOSS_MODE == 1:
                    acc += tl.load(partial_ptr + idx, mask=keep, other=0.0, cache_modifier=".cg")
                any_bad = tl.maximum(
                    any_bad, tl.load(bad_ptr + idx, mask=keep, other=0, cache_modifier=".cg")
                )
            if LOSS_MODE == 1:
                tl.store(loss_ptr, tl.sum(acc, axis=0))
            tl.store(ok_ptr, 1 - tl.max(any_bad, axis=0))
            tl.store(ticket_ptr, 0)  # ready for the next call


def _gamma_mode(gamma: float) -> int:
    return {0.0: 0, 1.0: 1, 2.0: 2}.get(float(gamma), 3)


def _workspace(device: torch.device, programs: int) -> dict[str, torch.Tensor]:
    """Partial sums, bad flags and the ticket counter of ``device``, grown when a call needs more programs
    (allocated and zeroed once, not per call)."""
    ws = _workspaces.get(device)
    if ws is None or ws["partial"].numel() < programs:
        with _lock:
            ws = _workspaces.get(device)
            if ws is None or ws["partial"].numel() < programs:
                size = max(programs, 1024)
                ws = {
                    "partial": torch.empty(size, dtype=torch.float32, device=device),
                    "bad": torch.empty(size, dtype=torch.int32, device=device),
                    "ticket": torch.zeros(1, dtype=torch.int32, device=device),
                }
                _workspaces[device] = ws
    return ws


def _launch(
    x, labels, gout, scale, grad, loss, ok, alpha_pos, alpha_neg, gamma, loss_mode, block, warps
) -> None:
    """One kernel launch over the flat logits (grad/loss/ok are written in place)."""
    m = x.numel()
    c = x.shape[1]
    programs = triton.cdiv(m, block)
    ws = _workspace(x.device, programs)
    check = ok is not None
    compiled = _focal_kernel[(programs,)](
        x,
        labels,
        x if gout is None else gout,
        x if scale is None else scale,
        x if grad is None else grad,
        x if loss is None else loss,
        ws["partial"],
        ws["bad"],
        ws["ticket"],
        ws["bad"] if ok is None else ok,
        m,
        float(alpha_pos),
        float(alpha_neg),
        float(gamma),
        C=c,
        GAMMA_MODE=_gamma_mode(gamma),
        LOSS_MODE=loss_mode,
        WRITE_GRAD=grad is not None,
        GOUT_MODE=0 if gout is None else (1 if gout.numel() == 1 else 2),
        HAS_SCALE=scale is not None,
        CHECK=check,
        INT64=m + block >= 2**31,
        BLOCK=block,
        REDUCE_BLOCK=_REDUCE_BLOCK if x.device.type == "cuda" else _INTERPRET_REDUCE_BLOCK,
        num_warps=warps,
    )
    if x.device.type == "cuda" and compiled is not None:
        key = f"C={c} {x.dtype} gamma_mode={_gamma_mode(gamma)} loss={loss_mode} grad={grad is not None}"
        if key not in _registers:
            _registers[key] = {
                "n_regs": int(compiled.n_regs),
                "n_spills": int(compiled.n_spills),
                "block": block,
            }


def _pick_config(x, labels, gout, scale, grad, loss, ok, alpha_pos, alpha_neg, gamma, loss_mode):
    """(BLOCK, num_warps): timed once per (C, dtypes, kind) on CUDA; a small fixed block elsewhere."""
    if x.device.type != "cuda":
        return (_INTERPRET_BLOCK, 1)
    key = (x.shape[1], x.dtype, labels.dtype, loss_mode, grad is not None, gout is not None, x.device.index)
    best = _best.get(key)
    if best is None:
        from triton.testing import do_bench

        timings = {}
        for block, warps in _CONFIGS:
            timings[(block, warps)] = do_bench(
                lambda b=block, w=warps: _launch(
                    x, labels, gout, scale, grad, loss, ok, alpha_pos, alpha_neg, gamma, loss_mode, b, w
                ),
                warmup=5,
                rep=20,
            )
        best = min(timings, key=timings.get)
        _best[key] = best
    return best


def kernel_registers() -> dict[str, dict[str, int]]:
    """``n_regs`` / ``n_spills`` (and block) of every kernel variant compiled so far on CUDA."""
    return dict(_registers)


# ------------------------------------------------------------------------------------------------------------
# The custom op: what torch.compile and CUDA graphs see.
# ------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("focaldet::focal_loss", mutates_args=())
def focal_loss_op(
    x: torch.Tensor,
    labels: torch.Tensor,
    grad_output: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
    alpha_pos: float,
    alpha_neg: float,
    gamma: float,
    loss_mode: int,
    write_grad: bool,
    check: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, gradient, ok flag) in one launch: loss is a 0-dim fp32 sum (loss_mode 1), the per-element loss
    in x's dtype (2) or empty (0); the gradient (times grad_scale and grad_output when given) is empty unless
    ``write_grad``; ok is a 1-element int32, 1 when every label is in [-2, C) (empty unless ``check``)."""
    x = x.contiguous()
    labels = labels.contiguous()
    loss = _new_loss(x, loss_mode)
    grad = torch.empty_like(x) if write_grad else x.new_empty(0)
    ok = torch.empty(1 if check else 0, dtype=torch.int32, device=x.device)
    if x.numel() == 0:
        if loss_mode == LOSS_SUM:
            loss.zero_()
        ok.fill_(1)
        return loss, grad, ok
    if grad_output is not None:
        grad_output = grad_output.contiguous()
    args = (
        x,
        labels,
        grad_output,
        grad_scale,
        grad if write_grad else None,
        loss if loss_mode else None,
        ok if check else None,
        alpha_pos,
        alpha_neg,
        gamma,
        loss_mode,
    )
    block, warps = _pick_config(*args)
    _launch(*args, block, warps)
    return loss, grad, ok


def _new_loss(x: torch.Tensor, loss_mode: int) -> torch.Tensor:
    if loss_mode == LOSS_SUM:
        return torch.empty((), dtype=torch.float32, device=x.device)
    if loss_mode == LOSS_ELEMENTS:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    return x.new_empty(0)


@focal_loss_op.register_fake
def _(x, labels, grad_output, grad_scale, alpha_pos, alpha_neg, gamma, loss_mode, write_grad, check):
    grad = torch.empty_like(x, memory_format=torch.contiguous_format) if write_grad else x.new_empty(0)
    ok = x.new_empty(1 if check else 0, dtype=torch.int32)
    return _new_loss(x, loss_mode), grad, ok


# ------------------------------------------------------------------------------------------------------------
# What detector.losses.focal calls.
# ------------------------------------------------------------------------------------------------------------


def focal_loss(
    x: torch.Tensor,
    labels: torch.Tensor,
    alpha: float | None,
    gamma: float,
    elementwise: bool,
    need_grad: bool,
    grad_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward: the loss (sum in fp32, or per element in x's dtype) and, if ``need_grad``, the gradient times
    ``grad_scale``. A label outside [-2, C) makes its rows NaN and fails a ``torch._assert_async`` (no
    sync)."""
    loss, grad, ok = launch(x, labels, alpha, gamma, elementwise, need_grad, grad_scale)
    torch._assert_async(ok[0], "sigmoid_focal_loss: a label is outside [-2, C)")
    if x.dtype == torch.float64 and not elementwise:
        loss = loss.double()
    return loss, (grad if need_grad else None)


def launch(
    x: torch.Tensor,
    labels: torch.Tensor,
    alpha: float | None,
    gamma: float,
    elementwise: bool,
    need_grad: bool,
    grad_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The custom op's (loss, gradient, ok flag) without the assertion (tests read the flag)."""
    alpha_pos, alpha_neg = alpha_pair(alpha)
    loss_mode = LOSS_ELEMENTS if elementwise else LOSS_SUM
    return focal_loss_op(
        x, labels, None, grad_scale, alpha_pos, alpha_neg, float(gamma), loss_mode, need_grad, True
    )


def focal_grad(
    x: torch.Tensor,
    labels: torch.Tensor,
    alpha: float | None,
    gamma: float,
    grad_output: torch.Tensor,
    grad_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Backward of the "gradient in backward" variant: dFL/dx * grad_scale * grad_output in one pass (the
    labels were checked by the forward)."""
    alpha_pos, alpha_neg = alpha_pair(alpha)
    _, grad, _ = focal_loss_op(
        x, labels, grad_output, grad_scale, alpha_pos, alpha_neg, float(gamma), LOSS_NONE, True, False
    )
    return grad


def kernel_only(
    x: torch.Tensor, labels: torch.Tensor, alpha: float | None, gamma: float
) -> Callable[[], torch.Tensor]:
    """A zero-argument call of the kernel alone (loss sum + gradient + flag into buffers allocated here), for
    measuring the kernel's bandwidth without the op's allocations and checks; returns the loss buffer."""
    x = x.detach().contiguous()
    labels = labels.contiguous()
    grad = torch.empty_like(x)
    loss = torch.empty((), dtype=torch.float32, device=x.device)
    ok = torch.empty(1, dtype=torch.int32, device=x.device)
    alpha_pos, alpha_neg = alpha_pair(alpha)
    args = (x, labels, None, None, grad, loss, ok, alpha_pos, alpha_neg, gamma, LOSS_SUM)
    block, warps = _pick_config(*args)

    def call() -> torch.Tensor:
        _launch(*args, block, warps)
        return loss

    return call
