"""Correctness check of the Triton focal-loss kernel against the float64 reference (used by
tools/gpu_check.sh).

On ``--device cuda`` it runs the real kernel at detector sizes; on ``--device cpu`` it runs the same checks at
small sizes with Triton's interpreter (``TRITON_INTERPRET=1`` is set here, before triton is imported). Checks:
loss and gradient for fp32/bf16 (fp16 too) x gamma x alpha x reduction, bitwise-repeatable loss sums, and the
in-kernel bad-label flag, both gradient variants (computed in forward, recomputed in backward), and on CUDA
the registers of every compiled kernel variant (``n_regs``, ``n_spills``). Exits 1 if any check fails;
``--json`` writes every case.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a bare GPU box runs it from the checkout

from detector import cli  # noqa: E402  (imports no triton: TRITON_INTERPRET is set below, before it)


def main(argv: list[str] | None = None) -> int:
    parser = cli.ToolParser(__doc__, config=False)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--json", type=Path)
    args = parser.parse(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from detector.losses import focal, focal_triton
    from detector.losses.focal import sigmoid_focal_loss, sigmoid_focal_loss_reference

    if args.device == "cuda" and not torch.cuda.is_available():
        print("check_kernel: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = args.device
    if device == "cuda":
        shapes = [(8 * 49104, 20), (4 * 30231, 1), (20000, 80), (5003, 365), (1, 1), (77, 3)]
        # every gamma mode of the kernel (0, 2, other) with and without alpha; each new combination compiles
        params = ((2.0, 0.25), (0.0, None), (0.5, 0.25), (5.0, None))
    else:  # the interpreter is slow: a few small cases (tests/test_focal_triton.py covers the full grid)
        shapes = [(77, 20), (50, 1)]
        params = ((2.0, 0.25), (0.0, None))
    tolerances = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (2e-2, 2e-3), torch.float16: (2e-3, 2e-4)}
    cases = []
    gen = torch.Generator().manual_seed(0)
    for n, c in shapes:
        x64 = torch.randn(n, c, generator=gen, dtype=torch.float64) * 6
        x64.view(-1)[0], x64.view(-1)[-1] = 100.0, -100.0
        labels = torch.randint(-2, c, (n,), generator=gen)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            if dtype != torch.float32 and (n, c) != shapes[0] and device == "cpu":
                continue
            if dtype == torch.float16 and (n, c) != shapes[0]:
                continue
            x = x64.to(dtype)
            xd, ld = x.to(device), labels.to(device, torch.int32)
            for (gamma, alpha), gradient in [(p, "forward") for p in params] + [(params[0], "backward")]:
                focal.TRITON_GRADIENT = gradient
                for reduction in ("sum", "mean", "none"):
                    # float64 reference on the same device (fast on a GPU), from the same rounded inputs
                    ref_x = xd.detach().double().requires_grad_()
                    ref = sigmoid_focal_loss_reference(ref_x, ld, alpha, gamma, reduction)
                    out_dtype = dtype if reduction == "none" else torch.float32
                    grad_out = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
                    grad_out = grad_out.to(out_dtype).double().to(device)  # rounded like ours
                    ref.backward(grad_out)
                    xk = xd.detach().clone().requires_grad_()
                    t0 = time.perf_counter()
                    loss = sigmoid_focal_loss(xk, ld, alpha, gamma, reduction, backend="triton")
                    loss.backward(grad_out.to(loss.dtype))
                    if device == "cuda":
                        torch.cuda.synchronize()
                    rtol, atol = tolerances[dtype]
                    # sums of N*C terms: relative to the total; elementwise: per element.
                    loss_err = (loss.detach().double() - ref.detach()).abs().max().item()
                    loss_scale = max(1.0, ref.detach().abs().max().item())
                    grad_err = (xk.grad.double() - ref_x.grad).abs()
                    grad_ok = bool((grad_err <= atol + rtol * ref_x.grad.abs()).all())
                    ok = (
                        loss_err <= rtol * loss_scale + atol and grad_ok and torch.isfinite(loss).all().item()
                    )
                    print(
                        f"{'ok ' if ok else 'BAD'} N={n} C={c} {dtype} gamma={gamma} alpha={alpha} "
                        f"{gradient} {reduction}: loss err {loss_err:.2e}, "
                        f"grad err {grad_err.max().item():.2e}",
                        flush=True,
                    )
                    cases.append(
                        {
                            "N": n,
                            "C": c,
                            "dtype": str(dtype).replace("torch.", ""),
                            "gamma": gamma,
                            "alpha": alpha,
                            "reduction": reduction,
                            "gradient": gradient,
                            "loss_abs_err": loss_err,
                            "grad_max_abs_err": grad_err.max().item(),
                            "seconds": time.perf_counter() - t0,
                            "ok": bool(ok),
                        }
                    )
    focal.TRITON_GRADIENT = "forward"
    # Repeatability: the last program adds the partial sums in a fixed order, so runs agree bit for bit.
    n, c = shapes[0]
    xr = torch.randn(n, c, generator=gen).to(device)
    lr = torch.randint(-2, c, (n,), generator=gen).to(device)
    sums = [sigmoid_focal_loss(xr, lr, backend="triton").item() for _ in range(3)]
    cases.append({"check": "repeatable loss sum", "values": sums, "ok": len(set(sums)) == 1})
    # Bad labels clear the kernel's ok flag and poison their rows (the public API raises through
    # _assert_async); the next call's flag is set again (the ticket counter was reset).
    lr_bad = lr.clone()
    lr_bad[n // 2] = c + 3
    loss, grad, ok = focal_triton.launch(xr, lr_bad, 0.25, 2.0, False, True)
    flagged = ok.item() == 0 and bool(torch.isnan(grad[n // 2]).all()) and bool(torch.isnan(loss))
    _, _, ok_again = focal_triton.launch(xr, lr, 0.25, 2.0, False, True)
    cases.append({"check": "bad-label flag", "ok": flagged and ok_again.item() == 1})
    registers = focal_triton.kernel_registers()
    for key, stats in registers.items():
        print(
            f"registers {key}: n_regs={stats['n_regs']} n_spills={stats['n_spills']} block={stats['block']}"
        )
    if registers:
        spills = {k: v["n_spills"] for k, v in registers.items() if v["n_spills"]}
        cases.append({"check": "no register spills", "spills": spills, "ok": not spills})

    failed = [case for case in cases if not case["ok"]]
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter)"
    print(f"check_kernel on {name}: {len(cases) - len(failed)}/{len(cases)} checks passed")
    for case in failed[:20]:
        print("FAILED", case)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"device": name, "torch": torch.__version__, "registers": registers, "cases": cases}, indent=1
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
