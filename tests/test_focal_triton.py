"""The Triton focal-loss kernel under TRITON_INTERPRET=1 on CPU tensors, and tools/gpu_check.sh --dry-run.

Triton decides at import/decoration time whether kernels are interpreted, and another test module may already
have imported triton in this pytest process, so setting the variable here would be unreliable (and would leak
into other tests). The kernel cases therefore run in a fresh subprocess: this file executed as a script with
TRITON_INTERPRET=1 set before anything imports triton. It reports every failing case, not just the first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    return env


@pytest.mark.slow
def test_triton_kernel_under_interpreter():
    proc = subprocess.run(
        [sys.executable, __file__],
        env=_subprocess_env(TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"interpreter cases failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    assert "interpreter cases passed" in proc.stdout


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_out"
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "--skip-model", "--out", str(out)],
        env=_subprocess_env(PYTHON=sys.executable, FOCALDET_NO_COMPILE="1"),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    summary = out / "summary.md"
    assert summary.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    text = summary.read_text()
    steps = (out / "steps.tsv").read_text()
    assert "kernel_check\tok" in steps and "bench_focal\tok" in steps, steps + proc.stdout[-4000:]
    assert "bench_model\tskipped (--skip-model)" in steps
    assert proc.returncode == 0, proc.stdout[-4000:]
    for name in ("env.txt", "kernel_check.json", "bench_focal.json", "kernel_check.log", "bench_focal.log"):
        assert (out / name).is_file(), name
    assert "Kernel correctness" in text and "checks passed" in text
    assert "| float32 | ours |" in text and "| float32 | torchvision |" in text
    assert "| float32 | exp_log_bound |" in text
    log = (out / "bench_focal.log").read_text()
    assert "load at start" in log and "load at end" in log and "log1p probe" in log
    assert "the exp+log bound" in log


def test_bench_focal_cuda_table_shows_kernel_call_and_copy_bandwidth():

    from detector.bench import focal as bench

    common = {"size": "voc512_b8", "N": 392832, "C": 20, "dtype": "float32", "first_call_s": 0.5}
    rows = [
        {
            **common,
            "variant": "torchvision",
            "ms": 2.0,
            "extra_peak_mib": 100.0,
            "speedup_vs_torchvision": 1.0,
        },
        {
            **common,
            "variant": "ours",
            "ms": 1.0,
            "extra_peak_mib": 10.0,
            "speedup_vs_torchvision": 2.0,
            "kernel_gbps": 2500.0,
            "call_gbps": 400.0,
            "copy_gbps": 3000.0,
            "fraction_of_copy": 2500 / 3000,
        },
        {
            **common,
            "dtype": "bfloat16",
            "variant": "ours",
            "ms": 1.0,
            "extra_peak_mib": 5.0,
            "call_gbps": 300.0,
            "graph_error": "capture failed",
        },
    ]
    lines = bench.markdown_table({"device": "cuda", "results": rows}).splitlines()
    assert lines[0].endswith("| kernel GB/s | call GB/s | copy GB/s | kernel of copy |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert lines[2].endswith("| 100.0 | 1.00 | 0.5 |  |  |  |  |")
    assert lines[3].endswith("| 2500 | 400 | 3000 | 83% |")
    assert lines[4].endswith("| failed | 300 | failed | - |")


def test_gpu_check_rejects_unknown_arguments():
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "unknown argument '--bogus'" in proc.stderr


# ------------------------------------------------------------------------------------------------------------
# Interpreter cases (run by test_triton_kernel_under_interpreter in a subprocess with TRITON_INTERPRET=1)
# ------------------------------------------------------------------------------------------------------------


def _interpreter_cases() -> list[str]:
    """Return a description of every failing case (empty when all pass)."""
    import torch

    from detector.losses import focal, focal_triton
    from detector.losses.focal import sigmoid_focal_loss, sigmoid_focal_loss_reference

    assert focal_triton.interpreter_enabled()
    failures: list[str] = []
    gen = torch.Generator().manual_seed(0)

    def compare(x, labels, alpha, gamma, reduction, tol, tag, gradient="forward"):
        focal.TRITON_GRADIENT = gradient
        ref_x = x.double().requires_grad_()
        ref = sigmoid_focal_loss_reference(ref_x, labels, alpha, gamma, reduction)
        out_dtype = x.dtype if reduction == "none" else torch.float32
        # the upstream gradient rounded to the loss's dtype, for both sides
        grad_out = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(out_dtype).double()
        ref.backward(grad_out)
        xk = x.clone().requires_grad_()
        loss = sigmoid_focal_loss(xk, labels, alpha, gamma, reduction, backend="triton")
        loss.backward(grad_out.to(loss.dtype))
        focal.TRITON_GRADIENT = "forward"
        expected_dtype = x.dtype if reduction == "none" else torch.float32
        problems = []
        if loss.dtype != expected_dtype or xk.grad.dtype != x.dtype:
            problems.append(f"dtypes loss {loss.dtype} grad {xk.grad.dtype}")
        if not torch.allclose(loss.detach().double(), ref.detach(), rtol=tol, atol=tol):
            problems.append(f"loss err {(loss.detach().double() - ref.detach()).abs().max().item():.3g}")
        if not torch.allclose(xk.grad.double(), ref_x.grad, rtol=tol, atol=tol * 0.1):
            problems.append(f"grad err {(xk.grad.double() - ref_x.grad).abs().max().item():.3g}")
        if problems:
            failures.append(
                f"{tag} {gradient} alpha={alpha} gamma={gamma} {reduction}: " + "; ".join(problems)
            )

    def case(n, c, dtype=torch.float32):
        x = torch.randn(n, c, generator=gen, dtype=torch.float64) * 8
        k = min(x.numel(), 201)
        x.view(-1)[:k] = torch.linspace(-100.0, 100.0, k, dtype=torch.float64)
        labels = torch.randint(-2, c, (n,), generator=gen)
        return x.to(dtype), labels

    # Full gamma x alpha x reduction grid on two shapes (C = 1, and C = 20 with N*C not a multiple of BLOCK):
    # the gradient computed in forward; the gradient recomputed in backward on C = 20.
    for n, c in ((37, 1), (53, 20)):
        x, labels = case(n, c)
        for gamma in (0.0, 0.5, 1.0, 2.0, 5.0):
            for alpha in (None, 0.25):
                for reduction in ("sum", "mean", "none"):
                    tol = 1e-5 if gamma in (0.0, 1.0, 2.0) else 2e-5
                    compare(x, labels, alpha, gamma, reduction, tol, f"[{n}x{c}]")
                    if c == 20 and gamma in (0.0, 0.5, 2.0):
                        compare(x, labels, alpha, gamma, reduction, tol, f"[{n}x{c}]", "backward")
    # More shapes: C > 128, one row, C = 80, int32 labels; 32 programs (the final sum takes 4 steps).
    for n, c in ((9, 130), (1, 3), (18, 80), (400, 20)):
        x, labels = case(n, c)
        for reduction in ("sum", "mean", "none") if n < 1000 else ("sum",):
            compare(x, labels.int(), 0.25, 2.0, reduction, 1e-5, f"[{n}x{c}] int32")
    for dtype, tol in ((torch.bfloat16, 8e-3), (torch.float16, 2e-3)):
        x, labels = case(40, 20, dtype)
        for reduction in ("sum", "mean", "none"):
            for gradient in ("forward", "backward"):
                compare(x, labels, 0.25, 2.0, reduction, tol, f"[40x20] {dtype}", gradient)
    # Bad labels: a clear error from the public API; inside the kernel, the ok flag and NaN rows.
    x, labels = case(30, 4)
    labels[7] = 9
    try:
        sigmoid_focal_loss(x, labels, backend="triton")
        failures.append("bad label 9 did not raise")
    except ValueError as exc:
        if "9" not in str(exc):
            failures.append(f"bad-label message does not name the value: {exc}")
    loss, grad, ok = focal_triton.launch(x, labels, 0.25, 2.0, False, True)
    if ok.item() != 0 or not torch.isnan(grad[7]).all() or not torch.isfinite(grad[8]).all():
        failures.append("in-kernel bad-label flag / NaN rows wrong")
    loss, grad, ok = focal_triton.launch(x, labels.clamp(max=3), 0.25, 2.0, True, False)
    if ok.item() != 1 or grad.numel() != 0 or loss.shape != x.shape:
        failures.append("ok flag after a bad call (ticket reset) / no gradient when not asked")
    # Deterministic: the same loss sum bit for bit, and the kernel alone gives the op's sum.
    x, labels = case(2000, 20)
    sums = [focal_triton.launch(x, labels, 0.25, 2.0, False, True)[0].item() for _ in range(3)]
    if len(set(sums)) != 1:
        failures.append(f"loss sum not repeatable: {sums}")
    launch = focal_triton.kernel_only(x, labels, 0.25, 2.0)
    if launch().item() != sums[0] or launch().item() != sums[0]:
        failures.append("kernel_only: loss sum differs from the op's or between calls")
    # The custom op: schema, fake implementation and torch.compile capture.
    try:
        torch.library.opcheck(
            focal_triton.focal_loss_op,
            (x[:50], labels[:50], None, None, 0.25, 0.75, 2.0, 1, True, True),
            test_utils=("test_schema", "test_faketensor"),
        )
    except Exception as exc:  # noqa: BLE001 - reported as a failing case
        failures.append(f"opcheck: {type(exc).__name__}: {exc}")
    compiled = torch.compile(
        lambda t, lab: focal_triton.launch(t, lab, 0.25, 2.0, False, True)[:2],
        backend="aot_eager",
        fullgraph=True,
    )
    got, eager = compiled(x, labels), focal_triton.launch(x, labels, 0.25, 2.0, False, True)
    if not (torch.equal(got[0], eager[0]) and torch.equal(got[1], eager[1])):
        failures.append("torch.compile(fullgraph) of the op differs from eager")
    # No gradient asked for under no_grad or without requires_grad: the op writes none.
    asked = []
    real_op = focal_triton.focal_loss_op

    def spy(*args):
        asked.append(args[8])  # write_grad
        return real_op(*args)

    focal_triton.focal_loss_op = spy
    try:
        with torch.no_grad():
            sigmoid_focal_loss(x.clone().requires_grad_(), labels, backend="triton")
        sigmoid_focal_loss(x, labels, reduction="mean", backend="triton")
        sigmoid_focal_loss(x.clone().requires_grad_(), labels, backend="triton").backward()
    finally:
        focal_triton.focal_loss_op = real_op
    if asked != [False, False, True]:
        failures.append(f"gradient written without grad (write_grad per call: {asked})")
    # Empty batch.
    empty = torch.zeros(0, 5, requires_grad=True)
    out = sigmoid_focal_loss(empty, torch.zeros(0, dtype=torch.int64), backend="triton")
    out.backward()
    if out.item() != 0.0 or empty.grad.shape != (0, 5):
        failures.append("empty batch")
    return failures


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("run with TRITON_INTERPRET=1 (tests/test_focal_triton.py does)")
    sys.path.insert(0, str(ROOT))
    failed = _interpreter_cases()
    for line in failed:
        print("FAILED", line)
    if failed:
        sys.exit(1)
    print("interpreter cases passed")
