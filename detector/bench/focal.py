"""The focal-loss benchmark behind `tools/bench_focal.py`: ours against torchvision's (and a compiled copy),
forward + backward, interleaved in one process, with the CPU's exp + log bound, a log1p probe, memory and, on
CUDA, kernel bandwidth against a device copy. Imports only torch, torchvision and detector.losses /
detector.reporting, so it runs in a plain `pip install torch torchvision` environment and on a bare GPU box.
"""


from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

from detector.losses import sigmoid_focal_loss
from detector.reporting import LOADED_PER_CORE, load_average, machine_description

# Anchors per image for RetinaNet P3-P7 with 9 anchors per location (feature size ceil(S / stride) per level,
# P6 and P7 from stride-2 3x3 convolutions): 512 px -> 5456 locations, 400 px -> 3359.
SIZES = {
    "voc512_b8": (8 * 49104, 20),
    "trees400_b4": (4 * 30231, 1),
    "coco512_b8": (8 * 49104, 80),
}
QUICK_SIZES = {"voc_quick": (4096, 20), "trees_quick": (3001, 1)}
VARIANTS = ("ours", "torchvision", "tv_compiled")
BOUND = "exp_log_bound"  # CPU only: exp + log over the same element count
ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ATEN_CPU_CAPABILITY",
    "LD_PRELOAD",
    "TORCHINDUCTOR_CACHE_DIR",
)


def load_line(when: str) -> tuple[str, bool]:
    """The load-average line (`detector.reporting`) and whether the machine is loaded (times inflated); at
    the end of the run this process's own threads are not counted against it."""
    from detector.reporting import load_report

    own = torch.get_num_threads() if when == "end" else 0
    load = load_average()
    return load_report(when, own), load is not None and load - own > LOADED_PER_CORE * (os.cpu_count() or 1)


def log1p_probe(elements: int = 8 << 20, repeats: int = 5) -> dict:
    """ms of torch.log1p, torch.exp and torch.log over ``elements`` float32 on one thread (best of repeats,
    into a preallocated output): log1p several times slower than exp marks a process where the library's
    log1p is slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.rand(elements, generator=torch.Generator().manual_seed(0)) * 3
        out = torch.empty_like(x)
        best = {}
        for name, fn in (("log1p", torch.log1p), ("exp", torch.exp), ("log", torch.log)):
            fn(x, out=out)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn(x, out=out)
                times.append((time.perf_counter() - t0) * 1e3)
            best[name] = min(times)
    finally:
        torch.set_num_threads(threads)
    return {
        "elements": elements,
        **{f"{k}_ms": v for k, v in best.items()},
        "log1p_over_exp": best["log1p"] / best["exp"],
    }


def _exp_log_bound(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """exp then log over the logits' element count (what the loss must compute at least once per element)."""
    flat = logits.detach().reshape(-1)
    buf = _exp_log_bound.buffers.get(flat.shape)
    if buf is None:
        buf = _exp_log_bound.buffers.setdefault(flat.shape, torch.empty_like(flat))
    torch.exp(flat, out=buf)
    torch.log(buf, out=buf)
    return buf


_exp_log_bound.buffers = {}


def first_call_probe(n: int, c: int) -> dict:
    """Seconds of the first forward + backward (compile included) in a fresh process with an empty inductor
    cache, then in another fresh process with that cache warm."""
    code = (
        "import sys, time, torch; sys.path.insert(0, sys.argv[1]); "
        "from detector.losses import sigmoid_focal_loss; "
        f"x = torch.randn({n}, {c}).requires_grad_(); lab = torch.randint(-2, {c}, ({n},)); "
        "t = time.perf_counter(); sigmoid_focal_loss(x, lab).backward(); print(time.perf_counter() - t)"
    )
    root = str(Path(__file__).resolve().parents[2])
    result = {}
    with tempfile.TemporaryDirectory(prefix="bench_focal_cache_") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        for name in ("cold_cache_s", "warm_cache_s"):
            out = subprocess.run(
                [sys.executable, "-c", code, root], env=env, capture_output=True, text=True, timeout=600
            )
            result[name] = float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    return result


ALPHA, GAMMA = 0.25, 2.0


def _tv_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """torchvision's focal loss with a one-hot target built from integer labels (-2 rows dropped by weight
    0)."""
    num_classes = logits.shape[1]
    target = torch.nn.functional.one_hot(labels.clamp(min=0).long(), num_classes).to(logits.dtype)
    target = target * (labels >= 0)[:, None].to(logits.dtype)
    loss = torchvision.ops.sigmoid_focal_loss(logits, target, ALPHA, GAMMA, reduction="none")
    return (loss * (labels != -2)[:, None].to(logits.dtype)).sum()


def _ours(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return sigmoid_focal_loss(logits, labels, ALPHA, GAMMA, reduction="sum", backend="auto")


def make_variant(name: str):
    if name == "ours":
        return _ours
    if name == BOUND:
        return _exp_log_bound
    if name == "torchvision":
        return _tv_loss
    if name == "tv_compiled":
        return torch.compile(_tv_loss, dynamic=True)
    raise ValueError(f"unknown variant {name!r}")


def make_inputs(n: int, c: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Detector-like logits (prior p = 0.01 plus noise) and labels (~1% positives, ~5% ignored)."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=gen) * 1.5 - 4.6).to(dtype)
    labels = torch.full((n,), -1, dtype=torch.int64)
    u = torch.rand(n, generator=gen)
    pos = u < 0.01
    labels[pos] = torch.randint(0, c, (int(pos.sum()),), generator=gen)
    labels[(u >= 0.01) & (u < 0.06)] = -2
    return logits.to(device).requires_grad_(), labels.to(device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fwd_bwd(fn, logits, labels) -> None:
    logits.grad = None
    out = fn(logits, labels)
    if fn is not _exp_log_bound:
        out.backward()


def time_it(step, device: str, warmup: int, repeats: int) -> float:
    """Median wall time in ms of ``step()`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _rss_kib() -> tuple[int, int]:
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def memory_probe(variant: str, n: int, c: int, dtype: torch.dtype) -> float:
    """CPU: extra peak MiB of one forward + backward (run inside a fresh subprocess, see module docstring)."""
    fn = make_variant(variant)
    logits, labels = make_inputs(n, c, dtype, "cpu")
    fwd_bwd(fn, logits, labels)
    fwd_bwd(fn, logits, labels)
    logits.grad = None
    Path("/proc/self/clear_refs").write_text("5")
    rss0, _ = _rss_kib()
    fwd_bwd(fn, logits, labels)
    _, hwm = _rss_kib()
    return (hwm - rss0) / 1024


def cpu_extra_memory(variant: str, n: int, c: int, dtype: torch.dtype) -> float | None:
    """Run ``memory_probe`` in a fresh subprocess; None where /proc is unavailable (not Linux)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); from detector.bench.focal import memory_probe; "
        "print(memory_probe(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), getattr(torch, sys.argv[5])))"
    )
    root = str(Path(__file__).resolve().parents[2])
    cmd = [sys.executable, "-c", code, root, variant, str(n), str(c), str(dtype).replace("torch.", "")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        print(f"memory probe {variant} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return float(out.stdout.strip().splitlines()[-1])


def cuda_extra_memory(fn, logits, labels) -> float:
    torch.cuda.synchronize()
    logits.grad = None
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd(fn, logits, labels)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def graph_ms(fn) -> float:
    """Median GPU time in ms of one ``fn()``, from a CUDA graph of back-to-back calls (no host overhead)."""
    from triton.testing import do_bench_cudagraph

    return do_bench_cudagraph(fn, rep=50, return_mode="median")


def bandwidth_row(logits: torch.Tensor, labels: torch.Tensor, fwd_call_ms: float) -> dict:
    """GB/s (bytes read + written) of our kernel alone, of one whole call, and of a same-size device copy."""
    from detector.losses import focal_triton

    num_bytes = 2 * logits.numel() * logits.element_size() + labels.numel() * labels.element_size()
    row = {"call_gbps": num_bytes / (fwd_call_ms * 1e-3) / 1e9}
    src = torch.empty(num_bytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    try:
        kernel_ms = graph_ms(focal_triton.kernel_only(logits, labels, ALPHA, GAMMA))
        copy_ms = graph_ms(lambda: dst.copy_(src))
    except Exception as err:  # noqa: BLE001 - a GPU check reports the failure and goes on with the table
        print(f"bench_focal: graph timing failed ({type(err).__name__}: {err})", flush=True)
        return {**row, "graph_error": str(err)}
    return {
        **row,
        "kernel_ms": kernel_ms,
        "kernel_gbps": num_bytes / (kernel_ms * 1e-3) / 1e9,
        "copy_gbps": num_bytes / (copy_ms * 1e-3) / 1e9,
        "fraction_of_copy": copy_ms / kernel_ms,
    }


def run(args: Any) -> dict:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_focal: --device cuda but CUDA is not available")
    sizes = QUICK_SIZES if args.quick else {k: SIZES[k] for k in args.sizes.split(",")}
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    variants = [v for v in VARIANTS if not (v == "tv_compiled" and args.no_compile)]
    if device == "cpu":
        torch.set_num_threads(args.threads)
        variants.append(BOUND)
    start_load, start_high = load_line("start")
    warmup, repeats = (1, 3) if args.quick else (args.warmup, args.repeats)
    report = {
        "device": device,
        "machine": machine_description(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "python": sys.executable,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "load_start": os.getloadavg(),
        "results": [],
    }
    print(
        f"# focal loss benchmark on {report['machine']}, torch {torch.__version__}, {report['date']}, "
        f"{report['threads']} threads, CPU capability {report['cpu_capability']}, python {sys.executable}",
        flush=True,
    )
    print(start_load, flush=True)
    if device == "cpu":
        probe = log1p_probe(elements=1 << 20 if args.quick else 8 << 20)
        report["log1p_probe"] = probe
        print(
            f"log1p probe ({probe['elements']} float32, 1 thread): log1p {probe['log1p_ms']:.2f} ms, "
            f"exp {probe['exp_ms']:.2f} ms, log {probe['log_ms']:.2f} ms: "
            f"log1p/exp = {probe['log1p_over_exp']:.1f} "
            f"({'a slow-log1p process' if probe['log1p_over_exp'] > 3 else 'log1p not slow here'})",
            flush=True,
        )
    for size_name, (n, c) in sizes.items():
        for dtype in dtypes:
            base_ms = None
            # All variants share one input; their timed runs are interleaved round-robin so that a change in
            # machine load during the run hits every variant alike (ratios stay fair on a shared box).
            logits, labels = make_inputs(n, c, dtype, device)
            fns, first_s = {}, {}
            for variant in variants:
                fns[variant] = make_variant(variant)
                t_first = time.perf_counter()
                fwd_bwd(fns[variant], logits, labels)
                _sync(device)
                first_s[variant] = time.perf_counter() - t_first
                for _ in range(warmup):
                    fwd_bwd(fns[variant], logits, labels)
            times = {variant: [] for variant in variants}
            for _ in range(repeats):
                for variant in variants:
                    times[variant].append(
                        time_it(lambda f=fns[variant], lg=logits, lb=labels: fwd_bwd(f, lg, lb), device, 0, 1)
                    )
            for variant in variants:
                fn, ms = fns[variant], statistics.median(times[variant])
                if device == "cuda":
                    mem = cuda_extra_memory(fn, logits, labels)
                elif args.no_memory or variant == BOUND:
                    mem = None
                else:
                    mem = cpu_extra_memory(variant, n, c, dtype)
                row = {
                    "size": size_name,
                    "N": n,
                    "C": c,
                    "dtype": str(dtype).replace("torch.", ""),
                    "variant": variant,
                    "ms": ms,
                    "first_call_s": first_s[variant],
                    "extra_peak_mib": mem,
                }
                if variant == "torchvision":
                    base_ms = ms
                if variant == "ours" and BOUND in times:
                    row["bound_ms"] = statistics.median(times[BOUND])
                    row["of_bound"] = ms / row["bound_ms"]
                if device == "cuda" and variant == "ours":
                    with torch.no_grad():
                        fwd_ms = time_it(lambda lg=logits, lb=labels: _ours(lg, lb), device, warmup, repeats)
                    row["fwd_ms"] = fwd_ms
                    row.update(bandwidth_row(logits, labels, fwd_ms))
                report["results"].append(row)
            del logits, labels, fns
            for row in report["results"]:
                if row["size"] == size_name and row["dtype"] == str(dtype).replace("torch.", "") and base_ms:
                    row["speedup_vs_torchvision"] = base_ms / row["ms"]
    print(markdown_table(report), flush=True)
    for row in report["results"]:
        if "of_bound" in row:
            print(
                f"{row['size']} {row['dtype']}: ours {row['ms']:.2f} ms = {row['of_bound']:.2f}x the exp+log "
                f"bound ({row['bound_ms']:.2f} ms), "
                f"{row.get('speedup_vs_torchvision', float('nan')):.2f}x torchvision",
                flush=True,
            )
    if device == "cpu" and args.first_call:
        n, c = next(iter(sizes.values()))
        report["first_call"] = first_call_probe(n, c)
        print(f"first call in a fresh process ({n} x {c}): {report['first_call']}", flush=True)
    if device == "cuda":
        from detector.losses import focal_triton

        report["kernel_registers"] = focal_triton.kernel_registers()
        for key, stats in report["kernel_registers"].items():
            print(f"registers {key}: n_regs={stats['n_regs']} n_spills={stats['n_spills']}", flush=True)
    end_load, end_high = load_line("end")
    report["load_end"] = os.getloadavg()
    report["load_warning"] = start_high or end_high
    print(end_load, flush=True)
    return report


def markdown_table(report: dict) -> str:
    """Rows: size, dtype, variant; columns: time, speed-up, extra peak memory (+ GB/s on CUDA)."""
    cuda = report["device"] == "cuda"
    head = "| size (N x C) | dtype | variant | fwd+bwd ms | speed-up vs torchvision | extra peak MiB |"
    head += " memory vs tv | first call s |"
    head += " kernel GB/s | call GB/s | copy GB/s | kernel of copy |" if cuda else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    tv_mem = {
        (r["size"], r["dtype"]): r["extra_peak_mib"]
        for r in report["results"]
        if r["variant"] == "torchvision"
    }
    for r in report["results"]:
        mem = r["extra_peak_mib"]
        base = tv_mem.get((r["size"], r["dtype"]))
        mem_ratio = f"{mem / base:.2f}" if mem is not None and base else "-"
        cells = [
            f"{r['size']} ({r['N']} x {r['C']})",
            r["dtype"],
            r["variant"],
            f"{r['ms']:.2f}",
            f"{r.get('speedup_vs_torchvision', float('nan')):.2f}x",
            "-" if mem is None else f"{mem:.1f}",
            mem_ratio,
            f"{r['first_call_s']:.1f}",
        ]
        if cuda and "call_gbps" in r:  # measured for our kernel only
            gbps = [r.get(k) for k in ("kernel_gbps", "call_gbps", "copy_gbps")]
            cells += ["failed" if v is None else f"{v:.0f}" for v in gbps]
            cells.append(f"{r['fraction_of_copy']:.0%}" if "fraction_of_copy" in r else "-")
        elif cuda:
            cells += ["", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


