"""Benchmark the fused focal loss against torchvision's, forward + backward, side by side in one process.

Variants: ``ours`` (``detector.losses.sigmoid_focal_loss``, backend "auto"), ``torchvision``
(``torchvision.ops.sigmoid_focal_loss`` with the one-hot target built from the labels, as a user would) and
``tv_compiled`` (``torch.compile`` of that same function). Times are medians of ``--repeats`` runs after
warm-up, the variants' runs interleaved round-robin so that load changes on a shared machine hit all alike.

Extra peak memory is the memory a forward + backward needs beyond its inputs (it includes the returned
gradient): on CUDA ``torch.cuda.max_memory_allocated`` after a reset; on CPU each variant runs in a fresh
subprocess with ``MALLOC_MMAP_THRESHOLD_=65536`` (every tensor of 64 KiB or more is its own mmap, returned to
the OS when freed), is warmed up, resets the kernel's RSS high-water mark (``echo 5 > /proc/self/clear_refs``)
and reports ``VmHWM - VmRSS`` around one more call. On CUDA it also reports our kernel's bandwidth (logits
read + labels read + gradient written, forward only) against a device-to-device copy of the same byte count,
both timed from a CUDA graph of back-to-back calls (``triton.testing.do_bench_cudagraph``: GPU time without
host launch overhead), and the bandwidth one whole forward call achieves in wall time ("call GB/s": launches,
allocations, reduction and checks included; small inputs are bound by these). The graph repeats without
flushing the L2 cache, so an input smaller than L2 (H100: 50 MB; the tree size) shows cache bandwidth for the
kernel and the copy alike.

On the CPU it also times ``exp_log_bound``: ``torch.exp`` then ``torch.log`` over the same element count (the
two transcendentals the fused loss needs, one pass each: the machine's throughput limit for this loss), and
prints our time as a multiple of it; a ``torch.log1p`` probe (8M float32, one thread, beside exp and log)
shows whether this process is one where the library's log1p is slow (docs/benchmarks.md); ``--first-call``
times the first call in fresh processes with a cold and a warm inductor cache. Every run prints the
machine's load average at start and end and warns when it is above 0.5 per core. Imports only torch,
torchvision and detector.losses, so it runs in a plain ``pip install torch torchvision`` environment.

Usage: ``python tools/bench_focal.py --device cpu --json out.json`` (``--quick`` for a tiny smoke run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a plain venv runs it from the checkout

from detector import cli  # noqa: E402
from detector.bench.focal import SIZES, run  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = cli.ToolParser(__doc__, config=False)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument("--sizes", default=None, help=f"comma list of {sorted(SIZES)}")
    parser.add_argument("--dtypes", default=None, help="comma list, e.g. float32,bfloat16")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke test)")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile(torchvision) variant"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU memory subprocesses")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument(
        "--first-call",
        action="store_true",
        help="CPU: time the first call in fresh processes (cold/warm cache)",
    )
    args = parser.parse(argv)
    cuda = args.device == "cuda"
    args.sizes = args.sizes or ("voc512_b8,trees400_b4,coco512_b8" if cuda else "voc512_b8,trees400_b4")
    args.dtypes = args.dtypes or ("float32,bfloat16" if cuda else "float32")
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    args.repeats = args.repeats if args.repeats is not None else (50 if cuda else 9)
    report = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
