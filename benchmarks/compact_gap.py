"""How far below the full KLD the compact reference's coarse-grained KLD is (#19).

``fastdiv reference`` keeps the base's top K classes and one tail class; KLD against it is the
KL of those coarse-grained distributions, a lower bound of the full one.  On the demo's seeded
LLM-like example (``fastdiv.cli.make_example``: Zipf-shaped logits with per-token noise and a
confident token, targets from the model's own distribution, a masked padding tail) with a model
that is the base plus Gaussian noise of a few scales (the demo's "reference model" perturbation
at 0.5; 0.1 and 0.02 for a closer, quantization-like model), and the same base sharpened
(logits x2, temperature 0.5: less mass in the tail, like a confident LLM), prints for each K the mean coarse
KLD as a fraction of the mean full KLD, and the same at the 99th percentile, and the base's mean probability mass outside the top K.

    PYTHONPATH=. python benchmarks/compact_gap.py [--rows 256] [--vocab 32000]
"""
import argparse

import numpy as np

import fastdiv
from fastdiv import _compact
from fastdiv.cli import make_example
from fastdiv.comparison import Comparison

ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=256)
ap.add_argument("--vocab", type=int, default=32000)
args = ap.parse_args()
base0, _, target = make_example(args.rows, args.vocab)
rng = np.random.default_rng(1)
tails = {}
print(f"{args.rows} x {args.vocab} float32, demo example; coarse KLD / full KLD (mean, 99th percentile)")
for sharp, scale in [(1, 0.5), (1, 0.1), (1, 0.02), (2, 0.1), (2, 0.02)]:
    base = base0 * np.float32(sharp)
    model = base + rng.standard_normal(base.shape, dtype=np.float32) * np.float32(scale)
    full = fastdiv.compare(base, model, target)
    fd = full.to_dict()
    cells = []
    for k in (16, 64, 256, 1024):
        ref = _compact.build(base, target, k, -100)
        tails[sharp, k] = float(np.mean(np.exp(ref["tail_logprob"])))
        cols, rows = _compact.per_row(ref, model, ignore_index=-100, topk=(1, 5), backend="auto")
        d = Comparison(cols, rows, (1, 5), True).to_dict()
        cells.append(f"K={k}: {d['kld']['mean'] / fd['kld']['mean']:.3f} / "
                     f"{d['kld']['quantiles']['99'] / fd['kld']['quantiles']['99']:.3f}")
    print(f"x{sharp} noise {scale:<5} full KLD mean {fd['kld']['mean']:.3g}:  " + "   ".join(cells))
print("mean base probability mass outside the top K: " + ", ".join(f"x{s} K={k}: {m:.3f}" for (s, k), m in tails.items()))
