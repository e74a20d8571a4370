"""Unlearning at CPU scale: forget 10% of the fictitious authors with GA, gradient difference, the NPO family
and ULD, from the same cached fact model; TOFU's forget quality and model utility per method, and the curve
of model utility against the forget-set NLL over the steps of GA and NPO (the NPO paper's claim, arXiv:2404.05868:
GA collapses, NPO moves far slower along the same path).

    python bench/unlearning_repro.py                        # experiment=unlearn: 100 authors, 60 steps
    python bench/unlearning_repro.py --steps 100 --every 10 --lr 3e-4

The first run trains the fact model and the retain-only model once (runner/trained.py cache). Prints a
table (ratios against the fact model in the same run) and saves docs/unlearning_curve.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from runner.config import compose  # noqa: E402

METHODS = ["ga", "grad_diff", "npo", "npo_rt", "npo_kl", "uld"]
CURVE = ["ga", "npo"]
COLUMNS = ["forget_quality", "model_utility", "forget_prob", "retain_prob", "forget_rouge", "retain_rouge",
           "forget_truth_ratio", "forget_nll"]


def overrides(args, method: str, runs_dir: Path) -> list[str]:
    out = ["experiment=unlearn", f"method={method}", f"trainer.max_steps={args.steps}", "logger=csv",
           f"hardware.threads={args.threads}", f"paths.runs_dir={runs_dir}", *args.override]
    if method in CURVE:
        out += [f"trainer.checkpoint_every_n_steps={args.every}", "trainer.keep_checkpoints=-1"]
    if args.lr is not None and method != "uld":
        out.append(f"method.lr={args.lr}")
    return out


def curve(run_dir: Path, data, cfg, fact: dict) -> list[dict]:
    """(step, forget NLL, model utility, forget quality) at every saved checkpoint of a run, from the fact model."""
    from runner.models import build_model, model_vocab_size

    points = [{"step": 0, **{k: fact[f"eval/{k}"] for k in ("forget_nll", "model_utility")}}]
    for ckpt in sorted((run_dir / "checkpoints").glob("step*.ckpt")):
        m = cfg.model.copy()
        m.init_from = str(ckpt)
        model = build_model(m, model_vocab_size(m, data.vocab_size)).float().eval()
        ev = data.evaluate(model)
        step = int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])
        points.append({"step": step, "forget_nll": ev["forget_nll"], "model_utility": ev["model_utility"],
                       "forget_quality": ev["forget_quality"]})
    return sorted(points, key=lambda p: p["step"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=10, help="checkpoint (curve point) interval of GA and NPO")
    p.add_argument("--lr", type=float, default=None, help="override every method's lr but ULD's (default: the YAMLs')")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "docs" / "unlearning_curve.png"))
    p.add_argument("override", nargs="*", help="more runner overrides, e.g. dataset.generator.num_authors=60")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")

    from runner.train import run
    from runner.trained import TrainedModels, model_dir
    from tasks.qa import RETAIN_ONLY

    runs_dir = Path(tempfile.mkdtemp(prefix="unlearning-"))
    methods = [m for m in args.methods.split(",") if (REPO / "configs" / "method" / f"{m}.yaml").exists()]
    results, curves, seconds = {}, {}, {}
    for method in methods:
        cfg = compose(overrides(args, method, runs_dir))
        t0 = time.perf_counter()
        try:
            results[method] = run(cfg, run_dir=runs_dir / method, identity=f"bench:{method}")
        except Exception as e:  # noqa: BLE001  (a method that fails is reported, the others still run)
            print(f"method={method} failed: {type(e).__name__}: {e}")
            continue
        seconds[method] = time.perf_counter() - t0

    cfg = compose(overrides(args, "npo", runs_dir))
    fact = json.loads((model_dir(cfg) / "summary.json").read_text())
    # the task as a run builds it (the retain-only model for forget quality), and the starting point's
    # forget quality (the runner's own runs do not compute it)
    from runner.config import make_task
    from tasks.base import BuildContext

    trained = TrainedModels(cfg, run, vocab_size=lambda path: json.loads((Path(path) / "summary.json").read_text())["vocab_size"])
    data = make_task(cfg.dataset).build(BuildContext(
        seq_len=cfg.model.seq_len, cache_dir=Path(cfg.paths.cache_dir).expanduser(), seed=cfg.seed,
        batch_size=cfg.dataset.batch_size, max_steps=0, accumulate_grad_batches=1, needs=frozenset({"forget-retain"}),
        trained_model=trained, load_model=trained.load))
    fact_eval = data.evaluate(trained.load(str(model_dir(cfg))))
    retain_eval = data.evaluate(trained.load(str(model_dir(cfg, *RETAIN_ONLY))))
    for method in CURVE:
        if method in results:
            curves[method] = curve(runs_dir / method, data, cfg, fact)

    g = cfg.dataset.generator
    print(f"\nforget {g.forget_fraction:.0%} of {g.num_authors} fictitious authors, {cfg.model.name} "
          f"(hidden {cfg.model.hidden_size}, {cfg.model.num_layers} layers), {args.steps} unlearning steps, "
          f"fact model: {cfg.base_steps} steps")
    header = f"{'model':>16} " + " ".join(f"{c:>18}" for c in COLUMNS) + f" {'utility/fact':>12} {'s':>6}"
    print(header)
    rows = [("fact model", fact_eval, None), ("retain-only", retain_eval, None)]
    rows += [(m, {k.removeprefix("eval/"): v for k, v in s.items() if k.startswith("eval/")}, seconds[m])
             for m, s in results.items()]
    for name, ev, sec in rows:
        cells = " ".join(f"{ev.get(c, float('nan')):>18.4g}" for c in COLUMNS)
        ratio = ev["model_utility"] / fact_eval["model_utility"]
        print(f"{name:>16} {cells} {ratio:>12.3f} {sec if sec is not None else float('nan'):>6.0f}")
    for method, points in curves.items():
        print(f"\n{method}: step, forget NLL/token, model utility, forget quality")
        for pt in points:
            print(f"  {pt['step']:>4} {pt['forget_nll']:>8.3f} {pt['model_utility']:>8.4f} {pt.get('forget_quality', float('nan')):>10.3g}")
    if curves:
        lr = args.lr if args.lr is not None else cfg.method.lr
        plot(curves, args.out, f"forget {g.forget_fraction:.0%} of {g.num_authors} fictitious authors: GA vs NPO "
                               f"(lr {lr:g}, β {cfg.method.beta:g}, same fact model)")
        print(f"\nsaved {args.out}")
    print(f"runs: {runs_dir}")


def plot(curves: dict[str, list[dict]], out: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    for method, points in curves.items():
        x, steps = [p["forget_nll"] for p in points], [p["step"] for p in points]
        utility = [p["model_utility"] for p in points]
        left.plot(x, utility, "o-", label=method, markersize=4)
        middle.plot(steps, x, "o-", label=method, markersize=4)
        right.plot(steps, utility, "o-", label=method, markersize=4)
    left.set_xscale("log")
    left.set_xlabel("forget-set NLL per answer token (log)")
    left.set_ylabel("model utility (retain: prob, ROUGE-L, truth ratio)")
    left.set_title("utility vs forgetting")
    middle.set_xlabel("unlearning step")
    middle.set_ylabel("forget-set NLL per answer token")
    middle.set_title("forget NLL over steps")
    right.set_xlabel("unlearning step")
    right.set_ylabel("model utility")
    right.set_title("utility over steps")
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
