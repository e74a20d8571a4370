"""ZIP-FIT (each stdlib codec) vs DSIR-style vs random selection: time per 1000 source examples and how
much of the selection matches the target domain.

Source = `--n` chunks of 500 characters, half Python source of the installed stdlib (code), half the pydoc
topic help texts (prose); target = `--targets` code chunks from other stdlib files; k = `--k`. Each
selector runs once in this process on one worker (wall and process CPU time); the table gives seconds per
1000 source examples, the ratio to ZIP-FIT/gzip, and the fraction of the top-k that is code.

    python bench/data_selection.py [--n 400] [--targets 20] [--k 100] [--workers 1]

The paper's claim to check (at small scale): ZIP-FIT selection is faster than DSIR and well aligned.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from methods.data.zip_fit import dsir_select, random_select, zip_fit_select  # noqa: E402

CHUNK = 500


def chunks(text: str, per_doc: int) -> list[str]:
    return [text[i:i + CHUNK] for i in range(0, len(text) - CHUNK + 1, CHUNK)][:per_doc]


def build_mix(n: int, n_targets: int):
    import pydoc_data.topics

    prose = [c for name in sorted(pydoc_data.topics.topics) for c in chunks(pydoc_data.topics.topics[name], 8)]
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(f for f in os.listdir(stdlib) if f.endswith(".py") and os.path.getsize(os.path.join(stdlib, f)) > 4000)
    per_file = []
    for f in files:
        with open(os.path.join(stdlib, f), encoding="utf-8", errors="replace") as fh:
            per_file.append(chunks(fh.read()[2000:], 4))
    code = [c for cs in per_file[0::2] for c in cs]
    target = [cs[0] for cs in per_file[1::2] if cs][:n_targets]
    half = n // 2
    if len(code) < half or len(prose) < half:
        raise SystemExit(f"--n {n} too large: {len(code)} code and {len(prose)} prose chunks available")
    return code[:half] + prose[:half], np.array([True] * half + [False] * half), target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--targets", type=int, default=20)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    source, is_code, target = build_mix(args.n, args.targets)
    selectors = {f"zip_fit/{codec}": (lambda c=codec: zip_fit_select(source, target, args.k, codec=c,
                                                                      workers=args.workers))
                 for codec in ("gzip", "zlib", "bz2", "lzma")}
    selectors["dsir (hashed 1+2-grams)"] = lambda: dsir_select(source, target, args.k, seed=0)
    selectors["random"] = lambda: random_select(len(source), args.k, seed=0)
    rows = []
    for name, select in selectors.items():
        wall, cpu = time.perf_counter(), time.process_time()
        chosen = select()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append((name, 1000 * wall / len(source), 1000 * cpu / len(source), float(is_code[chosen].mean())))
    base = rows[0][1]
    print(f"source {len(source)} (half code), target {len(target)} code chunks, k={args.k}, "
          f"workers={args.workers}")
    print("| selector | wall s / 1000 | cpu s / 1000 | wall vs zip_fit/gzip | code fraction of top-k |")
    print("| --- | --- | --- | --- | --- |")
    for name, wall, cpu, frac in rows:
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {wall / base:.2f}x | {frac:.2f} |")


if __name__ == "__main__":
    main()
