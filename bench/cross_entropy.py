"""Linear cross-entropy: time and peak memory of the loss, forward and forward+backward, per backend.

    python bench/cross_entropy.py                  # GPU: the issue's shapes in bf16; CPU: smaller, fp32
    python bench/cross_entropy.py --shapes 8192x2048x32000 --dtype fp32 --backends naive,reference
    python bench/cross_entropy.py --out table.txt  # also write the table to a file

Shapes are NxDxV (tokens x hidden x vocabulary). Backends: naive (e @ c.T + F.cross_entropy), reference
(vocabulary chunks), triton (CCE; CUDA only), compiled (torch.compile of naive; default on CUDA only:
compiling costs tens of seconds per shape). Targets are uniform over the vocabulary, none ignored.

Memory is the peak above what was allocated before the call (the inputs e, c and the targets):
- CUDA: torch.cuda.max_memory_allocated() - memory_allocated(), all cases in this process;
- CPU: each (shape, backend) runs in a fresh process, and the peak is that process's resident-set
  high-water mark (getrusage ru_maxrss) minus its resident set just before the first call. This counts
  every byte the call touches (torch's tensors, oneDNN workspaces); with glibc's mmap threshold fixed at
  64 KiB, freed blocks go back to the OS, so cached-but-free memory does not count. (tracemalloc would
  see none of torch's allocations.) Times come from other processes, with the default allocator.
`fwd` is the forward alone; `fwd+bwd` includes the gradients dE and dC, which every backend must return
(`grads` gives their size, so `fwd+bwd - grads` is the backend's own working memory). Times are the median
of --reps calls after one warm-up call; on the CPU, each backend is timed in --rounds fresh processes,
alternating between backends, and the fastest round is kept: on a shared machine other processes only
ever slow a round down.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernels.cross_entropy import linear_cross_entropy  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MiB = 2**20


def loss_fn(backend: str):
    if backend == "compiled":
        @torch.compile(dynamic=False)
        def compiled(e, c, t):
            return F.cross_entropy((e @ c.T).float(), t)

        return compiled
    return lambda e, c, t: linear_cross_entropy(e, c, t, backend=backend)


def make_inputs(N, D, V, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    e = torch.randn(N, D, generator=g, dtype=dtype, device=device).requires_grad_()
    c = torch.randn(V, D, generator=g, dtype=dtype, device=device).mul_(D**-0.5).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g, device=device)
    return e, c, t


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _timed(fn, sync) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3


def measure(N, D, V, dtype, backend, device, reps, what=("memory", "time")) -> dict:
    """One (shape, backend): peak extra memory (bytes) and/or median times (ms) of fwd and fwd+bwd."""
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    e, c, t = make_inputs(N, D, V, dtype, device)
    fn = loss_fn(backend)
    out = {"N": N, "D": D, "V": V, "backend": backend, "grad_bytes": (e.numel() + c.numel()) * e.element_size()}

    def fwd():
        fn(e, c, t)

    def fwd_bwd():
        fn(e, c, t).backward()
        e.grad = c.grad = None

    if "memory" in what:
        if cuda:
            fwd_bwd()  # warm-up: kernel compilation, torch.compile
            sync()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            peak = torch.cuda.max_memory_allocated
        else:
            base = _rss()

            def peak():
                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        loss = fn(e, c, t)
        sync()
        out["fwd_bytes"] = peak() - base
        loss.backward()
        sync()
        out["all_bytes"] = peak() - base
        del loss
        e.grad = c.grad = None
    if "time" in what:
        fwd_bwd()  # warm-up
        out["fwd_ms"] = statistics.median(_timed(fwd, sync) for _ in range(reps))
        out["all_ms"] = statistics.median(_timed(fwd_bwd, sync) for _ in range(reps))
    return out


def _child(spec: dict, env: dict | None = None) -> dict | None:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        print(f"  {spec}: failed\n{proc.stderr[-2000:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_case(args, N, D, V, backend) -> dict | None:
    if args.device == "cuda":
        try:
            return measure(N, D, V, DTYPES[args.dtype], backend, "cuda", args.reps)
        except torch.cuda.OutOfMemoryError:
            print(f"  {backend} {N}x{D}x{V}: out of memory", flush=True)
            torch.cuda.empty_cache()
            return None
    # CPU: memory and time each in a fresh process. For the memory one, glibc maps every block of 64 KiB
    # or more on its own and unmaps it when freed (a fixed mmap threshold), so the resident set follows
    # the live allocations instead of what the allocator keeps cached.
    spec = {"N": N, "D": D, "V": V, "backend": backend, "dtype": args.dtype, "reps": args.reps, "threads": args.threads}
    return _child({**spec, "what": ["memory"]}, env={"MALLOC_MMAP_THRESHOLD_": "65536"})


def cpu_times(args, N, D, V, rows: list[dict]) -> None:
    """CPU times: one fresh process per (round, backend), backends alternating, the fastest round kept
    (other processes on a shared machine only ever slow a round down)."""
    for _ in range(args.rounds):
        for r in rows:
            spec = {"N": N, "D": D, "V": V, "backend": r["backend"], "dtype": args.dtype, "reps": args.reps,
                    "threads": args.threads, "what": ["time"]}
            t = _child(spec)
            if t:
                for k in ("fwd_ms", "all_ms"):
                    r[k] = min(r.get(k, float("inf")), t[k])


def table(rows: list[dict], device: str, dtype: str) -> str:
    head = (f"linear cross-entropy, {dtype}, {device}: loss forward / forward+backward; "
            f"memory = peak above the inputs; x = ratio to naive\n"
            f"{'N x D x V':>20} {'backend':>9} {'fwd ms':>9} {'fwd+bwd ms':>11} {'x time':>7} "
            f"{'fwd MiB':>9} {'x':>7} {'fwd+bwd MiB':>12} {'x':>7} {'grads MiB':>10} {'-grads x':>9}")
    lines = [head]
    naive = {(r["N"], r["D"], r["V"]): r for r in rows if r["backend"] == "naive"}
    nan = {"fwd_ms": 0, "all_ms": 0, "fwd_bytes": 0, "all_bytes": 0, "grad_bytes": 0}
    for r in rows:
        base = naive.get((r["N"], r["D"], r["V"]), nan)
        x = {k: r[k] / base[k] if base[k] > 0 else float("nan") for k in ("all_ms", "fwd_bytes", "all_bytes")}
        own, own_base = r["all_bytes"] - r["grad_bytes"], base["all_bytes"] - base["grad_bytes"]
        lines.append(f"{r['N']:>6}x{r['D']:>5}x{r['V']:>7} {r['backend']:>9} {r['fwd_ms']:9.1f} "
                     f"{r['all_ms']:11.1f} {x['all_ms']:7.2f} {r['fwd_bytes'] / MiB:9.1f} "
                     f"{x['fwd_bytes']:7.3f} {r['all_bytes'] / MiB:12.1f} {x['all_bytes']:7.3f} "
                     f"{r['grad_bytes'] / MiB:10.1f} {own / own_base if own_base > 0 else float('nan'):9.3f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--shapes", default="8192x2048x32000,4096x2304x256000" if cuda else "2048x512x32000,1024x576x256000",
                   help="comma-separated NxDxV")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16" if cuda else "fp32")
    p.add_argument("--backends", default="naive,triton,reference,compiled" if cuda else "naive,reference")
    p.add_argument("--reps", type=int, default=5 if cuda else 1, help="timed calls per process (median)")
    p.add_argument("--rounds", type=int, default=2, help="CPU: timing processes per backend, alternating (min)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (CPU); default: torch's")
    p.add_argument("--out", help="also write the table here")
    p.add_argument("--budget", type=float, help="seconds: start no new case after this (the table says which were left)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.device = "cuda" if cuda else "cpu"

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:  # one CPU case in its own process
        s = json.loads(args.child)
        if s.get("threads"):
            torch.set_num_threads(s["threads"])
        print(json.dumps(measure(s["N"], s["D"], s["V"], DTYPES[s["dtype"]], s["backend"], "cpu", s["reps"], s["what"])))
        return

    if cuda:
        torch.set_float32_matmul_precision("high")
    device = torch.cuda.get_device_name() if cuda else f"cpu ({args.threads or torch.get_num_threads()} threads)"
    rows, left_out, start = [], [], time.perf_counter()
    for shape in args.shapes.split(","):
        N, D, V = (int(x) for x in shape.lower().split("x"))
        shape_rows = []
        for backend in args.backends.split(","):
            if backend == "triton" and not cuda:
                continue
            if args.budget and time.perf_counter() - start > args.budget:
                left_out.append(f"{backend} {shape}")
                continue
            r = run_case(args, N, D, V, backend)
            if r and cuda:
                rows.append(r)
                print(f"  {backend:>9} {N}x{D}x{V}: fwd+bwd {r['all_ms']:.1f} ms, peak {r['all_bytes'] / MiB:.1f} MiB",
                      flush=True)
                if args.out:  # after every case, so a run cut short still leaves its table
                    Path(args.out).write_text(table(rows, device, args.dtype) + "\n")
            elif r:
                shape_rows.append(r)
        if shape_rows:
            cpu_times(args, N, D, V, shape_rows)
            rows += [r for r in shape_rows if "all_ms" in r]
            print(f"  {N}x{D}x{V}: " + ", ".join(f"{r['backend']} {r['all_ms']:.0f} ms / {r['all_bytes'] / MiB:.0f} MiB"
                                               for r in shape_rows if "all_ms" in r), flush=True)
            if args.out:
                Path(args.out).write_text(table(rows, device, args.dtype) + "\n")
    text = table(rows, device, args.dtype)
    if left_out:
        text += f"\nnot run (--budget {args.budget:g} s): {', '.join(left_out)}"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
