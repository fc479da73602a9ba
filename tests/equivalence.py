"""Bit-for-bit equivalence of every public function between two versions of fastdiv (#17 item 7).

Runs every public function x backend x a grid of options on seeded inputs with whatever
``fastdiv`` is first on ``sys.path``, and saves each result's bytes (and any exception and
warning) to a pickle; ``--compare`` lists every case whose bytes differ.  Used to check that
moving the options into ``fastdiv.plan`` / ``fastdiv.reduce`` changed no number (apart from
the drift fixes of #17 and #18, listed in ``EXPECTED``)::

    git archive b288f98 | tar -x -C /tmp/base && (cd /tmp/base && python setup.py build_ext --inplace)
    NUMBA_ENABLE_CUDASIM=1 PYTHONPATH=/tmp/base python tests/equivalence.py --save /tmp/before.pkl
    NUMBA_ENABLE_CUDASIM=1 PYTHONPATH=.         python tests/equivalence.py --save /tmp/after.pkl
    python tests/equivalence.py --compare /tmp/before.pkl /tmp/after.pkl

``EXPECTED`` lists each difference with the commit or issue that made it; a numeric one is
measured against mpmath by ``python tests/equivalence_mpmath.py /tmp/before.pkl /tmp/after.pkl``
(benchmarks/NOTES.md, 2026-12-05, #17 item 7, holds its table).

Every case draws its inputs from a generator seeded by the case's name, so two runs see the
same inputs whatever subset or order runs.  The cuda backend runs in numba's simulator
(``NUMBA_ENABLE_CUDASIM=1``) on tiny shapes with small blocks, so its multi-block paths run.
Not collected by pytest (no ``test_`` prefix): it needs two builds.
"""
from __future__ import annotations

import argparse
import collections
import os
import pickle
import re
import sys
import time
import warnings
import zlib

import numpy as np

#: cases whose result may differ between b288f98 and #17's plan/reduce: (regex on the case
#: name, the reason, what the difference must look like).  Anything else that differs fails.
EXPECTED = [
    (r"^(cross_entropy|entropy|evaluate|logsumexp|kl_div|dask_kl_entropy_lse|states)\|numba\|[^|]+\|float64\|",
     "#21 2026-12-07: numba's float64 row loops (row_state._sums, long_rows._kl_sums) take exp_held: "
     "the vectoriser runs 1-2 vectors at a time instead of 4, so the lanes' partial sums are added "
     "in another order", "rounding"),
    (r"^(states\|[a-z]+\|.*ref=1|dask_kl_entropy_lse\|[a-z]+\|split=1\|)",
     "#21 4755d7f: each vocabulary slice's log mass ratio c formed from its kernel KL on every row "
     "where that is finite, not only on the rows near_kl_rows flags (the merged KLs move within "
     "rounding)", "rounding"),
    (r"^(kl_div|js_div|dask_kl_entropy_lse)\|cython\|",
     "#21 5917555: Cython's KL block path counts each row's maximum apart, as its logsumexp and "
     "entropy blocks do (kl_div and js_div at beta 0 or 1 move within rounding; confident float32 "
     "rows 5.5e-4 -> 3e-7)", "rounding"),
    (r"^js_div\|numba\|(2d|3d)\|[^|]+\|logits\|red=none\|T=2\.5\|beta=0\.5$",
     "#19/#21 2026-12-07: a float32 row pair with JS below JS_LANES_BELOW after log-based chunks is "
     "summed again class by class: the confident row at T = 2.5 (JS 2e-6 to 4e-6) moves toward "
     "mpmath's value (float32 2.5e-5 -> 4e-7 relative, float16 2.7e-5 -> 6.4e-7, bfloat16 3.1e-5 "
     "-> 2.7e-7)", "near0"),
    (r"^(evaluate\|[a-z]+\|.*ref=1|states\|numpy\|.*ref=1|dask_kl_entropy_lse\|numpy\|split=1\|)",
     "#21 2026-12-07: evaluate's KL columns finished by the CPU kernels as kl_div's kernels finish "
     "theirs (the one pass's rounding, or the row summed again from cache with the state's own "
     "sums); the numpy backend's from reference.kl_rows for every row", "rounding"),
    (r"^(states\|[a-z]+\|.*ref=1|dask_kl_entropy_lse\|[a-z]+\|split=1\|)",
     "#21 2026-12-07: vocabulary shards' KLs merged by the chain rule from each shard's own KLs, "
     "not from the one pass's summed wxz, wzx (states and dask split by vocabulary)", "rounding"),
    (r"cross_entropy\|[a-z]+\|empty\|.*(red=mean|soft_ignore=-)", "#17: an empty mean is NaN (torch), was 0.0",
     "empty_nan"),
    (r"cross_entropy\|.*\|hard\|(all_ignored|zero_weight)\|red=mean", "#17: an empty mean is NaN (torch), was 0.0",
     "empty_nan"),
    (r"dask_cross_entropy\|.*\|(all_ignored|empty)\|red=mean", "#17: an empty mean is NaN (torch), was 0.0",
     "empty_nan"),
    (r"cuda_device\|cross_entropy.*\|all_ignored\|red=mean", "#17: an empty mean is NaN (torch), was 0.0",
     "empty_nan"),
    (r"soft_ignore=[0-9]", "#18: a class ignore_index with probability targets is refused (torch)", "refused"),
    (r"weight_bf16", "#18: bfloat16 class weights are accepted (computed in float32)", "accepted"),
    (r"meter_ce\|.*\|w=1\|.*float32", "#17: a meter's denominator uses the API's weights (compute dtype)",
     "close"),
    (r"meter_(ppl|ev)\|", "#17: meters sum the counted rows and take exp as evaluate does", "close"),
    (r"cross_entropy\|cuda\|.*\|hard\|.*eps=0\.0\|(zloss|softcap|lse)",
     "#17: cuda's options path weights the float64 nll, as the CPU backends (it rounded it to float32 first)",
     "close"),
    # #17 item 7's triage (benchmarks/NOTES.md, 2026-12-05): every other difference between b288f98
    # and main, each against mpmath.  "rounding": within the compare's rounding bound; "near0": a
    # row whose value is far below 1 (the confident row of the edge shapes, KL of nearly equal
    # rows) moved by at most a few epsilons at the scale of 1.
    (r"^(entropy|kl_div|js_div|cross_entropy|logsumexp|topk_kl_div)\|numpy\|",
     "#18 5c1922c: the reference's lse and log-softmax keep a dominated row's rest (log c + log1p(r / c)), "
     "rel_entr terms, KL from logits without cancellation", "rounding"),
    (r"^dask_kl_entropy_lse\|numpy\|", "#18 5c1922c: the reference's lse, log-softmax and KL (as above)", "rounding"),
    (r"^(entropy|kl_div)\|numpy\|(2d|3d)\|[^|]+\|logits\|red=none|^cross_entropy\|numpy\|2d\|float16\|hard\|.*red=none",
     "#18 5c1922c: the confident row's tiny entropy / KL / CE (1e-13 .. 1e-15) now within 15 ulp of mpmath "
     "(b288f98: up to 5e-2 relative)", "near0"),
    (r"^js_div\|numpy\|(2d|3d)\|[^|]+\|logits\|red=none",
     "#18 5c1922c: the reference's JS of the confident row (~1e-15) is a sum of signed terms; with the exact "
     "log p of the dominant class it no longer cancels against log m's rounding: 2e-2 relative (b288f98: "
     "2e-14 .. 1.5e-2), under 1.5e-16 absolute, TOL 1e-12; since the triage log p - log m is formed from "
     "d = log q - log p where |d| <= 1 (reference.js_rows): 1.2e-11 relative on such rows", "near0"),
    (r"^(logsumexp|dask_kl_entropy_lse)\|numba\|",
     "#18 dd42373: numba's lse kernel forms log s in two parts (within 1 ulp of mpmath, before and after)",
     "rounding"),
    (r"^cross_entropy\|numba\|.*\|(soft\|.*|eps=0\.1)\|(lse|zloss=0\.1.*)$",
     "#18 dd42373: numba's lse kernel (cross_entropy's lse and z_loss with smoothing or soft targets)",
     "rounding"),
    (r"^cross_entropy\|numba\|[^|]+\|float64\|hard\|.*\|eps=0\.1\|(softcap=5)?$",
     "c4c81b5: numba's row kernels compiled serial (not parfor-lowered): the smoothed CE sum rounds "
     "differently (1 ulp, either way)", "rounding"),
    (r"^(entropy|kl_div|js_div)\|numba\|.*\|probs\|",
     "#18 93de4c0, b4a5d11, fdbfe4c: numba's KL / JS / entropy from probabilities by rel_entr's log-ratio "
     "terms, vectorised again", "rounding"),
    (r"^(kl_div|js_div)\|numba\|[^|]+\|float64\|logits\|",
     "#18 93de4c0: numba's float64 KL of nearly equal rows recomputed without cancellation", "near0"),
    (r"^(kl_div|js_div)\|cython\|.*\|probs\|",
     "#18 97b4aac, 5b40252: Cython's KL / JS from probabilities by fd_logratio (rel_entr's terms)", "rounding"),
    (r"^(kl_div|js_div)\|cython\|[^|]+\|float64\|logits\|",
     "#18 97b4aac: Cython's float64 KL of nearly equal rows recomputed without cancellation", "near0"),
    (r"^topk_kl_div\|cython\|[^|]+\|float64\|",
     "520b177: Cython's top-k KL fences log q_i against -fassociative-math", "near0"),
    (r"^(cross_entropy|logsumexp)\|cuda\||^cuda_device\|cross_entropy\|",
     "#18 39d1053, 8ed5eee: cuda's lse / CE state (m, k, r) keeps a dominated row's log1p of its rest",
     "near0"),
    (r"^(entropy|kl_div|js_div)\|cuda\|.*\|probs\|",
     "#18 39d1053: cuda's rel_entr terms and domain values for probabilities (a NaN row's sign)", "rounding"),
    (r"^kl_div\|cuda\|[^|]+\|float64\|logits\|",
     "#18 39d1053: cuda's float64 KL of nearly equal rows recomputed by a one-block-per-row pass", "near0"),
    (r"^(cross_entropy|evaluate)\|(numba|cython|numpy)\|.*softcap=5",
     "#21 46764c1: softcap's transform in the Cython extension for every CPU backend when it is built "
     "(its own exp, within a few ulp of numba's)", "rounding"),
    (r"^(evaluate|states|cross_entropy)\|numpy\|",
     "ec74c38: the numpy backend's evaluate state forms s as c + r, as the compiled kernels do (a confident "
     "row's small terms no longer lose ~10 ulps of 1 beside the maximum's)", "near0"),
    (r"^(js_div\|numba\|(2d|3d)\|(?!float64)[^|]+\|logits\|.*beta=0\.5$|kl_div\|cython\|(2d|3d)\|(?!float64)[^|]+\|logits\|)",
     "#19/#21 654ff45: numba's nearby-JS chunk probe reads both ends of a chunk and counts |d| >= 1/2, "
     "so a chunk may change between the near, class-by-class and log-based terms (2 ulp at JS 0.25); "
     "Cython's float32 KL redo takes its failing vectors class by class (the confident row's 2.6e-14, "
     "1 ulp)", "rounding"),
    (r"^[a-z_]+\|cython\|(?!.*float64)",
     "#21 5361f37: the AVX-512 float32 exp by sixteenths (same accuracy: max 4.49 ulp on [-87, 0]); "
     "every Cython result computed in float32 moves within rounding (432 cases against 8a3801a)", "rounding"),
    (r"^(logsumexp|entropy|cross_entropy)\|cython\|.*float64",
     "#21 cbdfb2f: Cython's short-row finish is log1p(r) alone where every row's k is 1 (float64 lse at "
     "V = 2 against scipy: mean 0.27 -> 0.14 ulp, max unchanged)", "rounding"),
    (r"^kl_div\|numba\|(2d|3d)\|(?!float64)[^|]+\|logits\|",
     "#21: numba's float32 KL redo (_kl_near32) compiled as a function of its own, no longer "
     "inlined into its two callers: the nearly equal row's KL moves by 1 ulp (6.0132238e-14 -> "
     "6.0132231e-14; against mpmath 4.4e-6 -> 4.3e-6 relative at worst, 5 cases)", "near0"),
    (r"^(kl_div\|(cython|numba)\|(2d|3d)\|(?!float64)[^|]+\|logits\||js_div\|numba\|2d\|(?!float64)[^|]+\|logits\|.*beta=(0|1)\.0$)",
     "#21 4cef0ea: float32 KL from logits below 1e-4 L summed again class by class: the nearly equal "
     "row moves from the one pass's cancellation (-9.5e-8) to its exact value (6e-14), and the means "
     "with it (js_div at beta 0 / 1 is kl_div)", "near0"),
    (r"^evaluate\|(cython|numba)\|.*\|ref=1\|",
     "#21 64c0fa4: evaluate's KL columns below kl_div's thresholds (1e-4 L float32, 1e-3 L "
     "float64) summed again by kl_logits: the nearly equal row's KL (1e-16 to 4e-13) moves from "
     "the one pass's cancellation to kl_div's value", "near0"),
    (r"^js_div\|cython\|(2d|3d)\|(?!float64)[^|]+\|logits\|",
     "#21 72d6d1a, c8502fc: Cython's float32 JS from logits, its first pass fused and its log by a table "
     "(max 2.15 ulp): the confident row's JS (~1e-16) moves within the float32 near-zero bound", "near0"),
]
CPU = ("numba", "cython", "numpy")


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def cast(a, dtype):
    return a.astype(bf16()) if dtype == "bf16" else a.astype(dtype)


def logits(rng, shape, dtype, edges=None):
    """Seeded logits; ``edges`` (default: the shape is one of ``EDGES``) adds a masked class,
    a fully masked row and a confident row."""
    x = rng.standard_normal(shape) * 3.0
    if edges is None:
        edges = shape in [SHAPES[k] for k in EDGES] + [CUDA_SHAPES[k] for k in EDGES]
    if edges and x.ndim >= 2 and x.size and shape[-1] > 2:
        flat = x.reshape(-1, shape[-1])
        flat[0, 1] = -np.inf                        # a masked class
        if flat.shape[0] > 2:
            flat[2, :] = -np.inf                    # a fully masked row
        if flat.shape[0] > 3:
            flat[3, 0] = 40.0                       # a confident row
    return cast(x, dtype)


def probs(rng, shape, dtype):
    p = rng.random(shape) ** 3
    if p.size:
        p.reshape(-1, shape[-1])[0, 0] = 0.0
    p = p / p.sum(axis=-1, keepdims=True) if p.size else p
    return cast(p, dtype)


def log_probs(rng, shape, dtype):
    x = rng.standard_normal(shape)
    m = x.max(axis=-1, keepdims=True) if x.size else 0
    lp = x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))) if x.size else x
    return cast(lp, dtype)


def make(kind, rng, shape, dtype):
    return {"logits": logits, "probs": probs, "log_probs": log_probs}[kind](rng, shape, dtype)


def targets(rng, lead, v, rule):
    t = rng.integers(0, v, lead) if lead else np.int64(rng.integers(0, v))
    t = np.asarray(t, dtype=np.int64)
    if rule == "some_ignored" and t.size > 1:
        t.reshape(-1)[1] = -100
    elif rule == "all_ignored":
        t[...] = -100
    elif rule == "ignore7" and t.size:
        t.reshape(-1)[0] = 7 if v > 7 else v - 1
    return t


# --------------------------------------------------------------------------- the grid


#: shapes; the edge rows (masked class, fully masked row, confident row) only in "2d" and "3d",
#: so that the others' means and sums stay finite and informative
SHAPES = {"2d": (6, 37), "3d": (2, 3, 19), "1d": (23,), "empty": (0, 11), "v1": (4, 1), "wide": (3, 1500),
          "clean": (7, 29)}
CUDA_SHAPES = {"2d": (5, 9), "3d": (2, 2, 7), "1d": (6,), "empty": (0, 5), "v1": (3, 1), "clean": (4, 11)}
EDGES = ("2d", "3d")
DTYPES = ("float32", "float64", "float16", "bf16")


def cases(backends, cuda_tiny):
    """Yield (name, thunk) for every case."""
    shapes = CUDA_SHAPES if cuda_tiny else SHAPES
    dtypes = ("float32", "float64") if cuda_tiny else DTYPES
    import fastdiv

    for b in backends:
        for sname, shape in shapes.items():
            for dt in dtypes:
                if dt in ("float16", "bf16") and sname not in ("2d", "clean"):
                    continue                        # half inputs: the 2-D shapes cover them
                if cuda_tiny and dt == "float64" and sname in ("3d", "v1"):
                    continue
                yield from _rowwise_cases(fastdiv, b, sname, shape, dt, cuda_tiny)
                yield from _ce_cases(fastdiv, b, sname, shape, dt, cuda_tiny)
                if not cuda_tiny or sname in ("2d", "empty"):
                    yield from _evaluate_cases(fastdiv, b, sname, shape, dt, cuda_tiny)
        yield from _misc_cases(fastdiv, b, cuda_tiny)


def _rowwise_cases(fd, b, sname, shape, dt, tiny):
    pre = f"{b}|{sname}|{dt}"
    yield f"logsumexp|{pre}", lambda name: fd.logsumexp(logits(rng_for(name), shape, dt), backend=b)
    reds = ("none", "mean", "sum")
    for kind in ("logits", "probs", "log_probs"):
        temps = (1.0, 2.5) if kind == "logits" else (1.0,)
        for red in reds:
            for T in temps:
                if tiny and T != 1.0 and red != "none":
                    continue
                yield (f"entropy|{pre}|{kind}|red={red}|T={T}",
                       lambda name, kind=kind, red=red, T=T: fd.entropy(
                           make(kind, rng_for(name), shape, dt), inputs=kind, reduction=red, temperature=T, backend=b))
                yield (f"kl_div|{pre}|{kind}|red={red}|T={T}",
                       lambda name, kind=kind, red=red, T=T: _two(fd.kl_div, name, kind, shape, dt, b,
                                                                  inputs=kind, reduction=red, temperature=T))
                for beta in ((0.0, 0.5, 1.0) if tiny else (0.0, 0.3, 0.5, 1.0)):
                    if red != "mean" and beta in (0.0, 1.0):
                        continue
                    yield (f"js_div|{pre}|{kind}|red={red}|T={T}|beta={beta}",
                           lambda name, kind=kind, red=red, T=T, beta=beta: _two(
                               fd.js_div, name, kind, shape, dt, b, inputs=kind, reduction=red, temperature=T,
                               beta=beta))
    if len(shape) >= 2 or not tiny:
        v = shape[-1]
        for k in sorted({1, min(3, v), v}):
            for tail in ("renormalize", "bucket"):
                for red in reds:
                    yield (f"topk_kl_div|{pre}|k={k}|tail={tail}|red={red}",
                           lambda name, k=k, tail=tail, red=red: _topk(fd, name, shape, dt, b, k, tail, red))


def _two(fn, name, kind, shape, dt, b, **kw):
    rng = rng_for(name)
    p = make(kind, rng, shape, dt)
    q = make(kind, rng, shape, dt)
    return fn(p, q, backend=b, **kw)


def _topk(fd, name, shape, dt, b, k, tail, red):
    rng = rng_for(name)
    z = logits(rng, shape, dt, edges=False)
    lead, v = shape[:-1], shape[-1]
    teacher = log_probs(rng, shape, "float64")
    idx = np.argsort(-teacher, axis=-1)[..., :k]
    idx = np.ascontiguousarray(idx[..., ::-1])                     # any order
    top = np.take_along_axis(teacher, idx, axis=-1)
    return fd.topk_kl_div(idx, cast(top, dt), z, tail=tail, reduction=red, backend=b)


def _ce_cases(fd, b, sname, shape, dt, tiny):
    pre = f"{b}|{sname}|{dt}"
    lead, v = shape[:-1], shape[-1]
    rules = ("plain", "some_ignored", "all_ignored", "zero_weight", "ignore7")
    for rule in rules:
        for red in ("none", "mean", "sum"):
            for weighted in (False, True):
                if rule == "zero_weight" and not weighted:
                    continue
                for eps in (0.0, 0.1):
                    for opt in ("", "zloss=0.1", "softcap=5", "lse", "zloss=0.1+softcap=5"):
                        if tiny and ("softcap" in opt and (eps or weighted)):
                            continue
                        if tiny and rule in ("ignore7",) and opt:
                            continue
                        yield (f"cross_entropy|{pre}|hard|{rule}|red={red}|w={int(weighted)}|eps={eps}|{opt}",
                               lambda name, rule=rule, red=red, weighted=weighted, eps=eps, opt=opt: _ce(
                                   fd, name, shape, dt, b, "hard", rule, red, weighted, eps, opt))
    for red in ("none", "mean", "sum"):
        for weighted in (False, True):
            for eps in (0.0, 0.1):
                for opt in ("", "T=2", "zloss=0.1", "softcap=5", "lse"):
                    if tiny and "softcap" in opt:
                        continue
                    yield (f"cross_entropy|{pre}|soft|red={red}|w={int(weighted)}|eps={eps}|{opt}",
                           lambda name, red=red, weighted=weighted, eps=eps, opt=opt: _ce(
                               fd, name, shape, dt, b, "soft", "plain", red, weighted, eps, opt))
    # #18: ignore_index with probability targets, bfloat16 class weights
    for ii in (-100, -1, 3):
        yield (f"cross_entropy|{pre}|soft_ignore={ii}",
               lambda name, ii=ii: fd.cross_entropy(logits(rng_for(name), shape, dt),
                                                    probs(rng_for(name + "t"), shape, dt), ignore_index=ii, backend=b))
    for tk in ("hard", "soft"):
        yield (f"cross_entropy|{pre}|{tk}|weight_bf16",
               lambda name, tk=tk: _ce(fd, name, shape, dt, b, tk, "plain", "mean", "bf16", 0.0, ""))


def _ce(fd, name, shape, dt, b, tk, rule, red, weighted, eps, opt):
    rng = rng_for(name)
    lead, v = shape[:-1], shape[-1]
    x = logits(rng, shape, dt)
    t = targets(rng, lead, v, rule) if tk == "hard" else probs(rng, shape, dt)
    w = None
    if weighted:
        w = rng.uniform(0.2, 2.0, v)
        if rule == "zero_weight" and tk == "hard":
            w[np.asarray(t).reshape(-1)[np.asarray(t).reshape(-1) >= 0]] = 0.0
        if weighted == "bf16":
            w = w.astype(bf16())
    kw = dict(reduction=red, weight=w, label_smoothing=eps, backend=b)
    for part in filter(None, opt.split("+")):
        if part.startswith("zloss="):
            kw["z_loss"] = float(part[6:])
        elif part.startswith("softcap="):
            kw["softcap"] = float(part[8:])
        elif part.startswith("T="):
            kw["temperature"] = float(part[2:])
        elif part == "lse":
            kw["return_lse"] = True
    return fd.cross_entropy(x, t, **kw)


def _evaluate_cases(fd, b, sname, shape, dt, tiny):
    pre = f"{b}|{sname}|{dt}"
    for rule in ("some_ignored", "all_ignored", "plain"):
        for ref in (False, True):
            for opt in ("", "zloss=0.1", "softcap=5", "model||ref"):
                if tiny and (opt == "softcap=5" and ref):
                    continue
                yield (f"evaluate|{pre}|{rule}|ref={int(ref)}|{opt}",
                       lambda name, rule=rule, ref=ref, opt=opt: _ev(fd, name, shape, dt, b, rule, ref, opt))


def _ev(fd, name, shape, dt, b, rule, ref, opt):
    rng = rng_for(name)
    lead, v = shape[:-1], shape[-1]
    x = logits(rng, shape, dt)
    t = targets(rng, lead, v, rule)
    z = logits(rng, shape, dt) if ref else None
    kw = dict(topk=(1, 3), reference=z, backend=b)
    if opt.startswith("zloss="):
        kw["z_loss"] = float(opt[6:])
    elif opt.startswith("softcap="):
        kw["softcap"] = float(opt[8:])
    elif opt == "model||ref":
        kw["kl_direction"] = opt
    return fd.evaluate(x, t, **kw)


def _misc_cases(fd, b, tiny):
    """Meters, states, dask, gaussian_kl, device arrays."""
    from fastdiv import meters

    shape = (6, 9) if tiny else (10, 33)
    v = shape[-1]
    for rule in ("plain", "some_ignored", "all_ignored", "zero_weight"):
        for weighted in (False, True):
            if rule == "zero_weight" and not weighted:
                continue
            for eps in (0.0, 0.1):
                for dt in ("float32", "float64"):
                    def meter_ce(name, rule=rule, weighted=weighted, eps=eps, dt=dt):
                        rng = rng_for(name)
                        x = logits(rng, shape, dt)
                        t = targets(rng, shape[:-1], v, rule)
                        w = None
                        if weighted:
                            w = rng.uniform(0.2, 2.0, v)
                            if rule == "zero_weight":
                                w[t[t >= 0]] = 0.0
                        m = meters.CrossEntropyMeter(weight=w, label_smoothing=eps, backend=b)
                        m.update(x[:4], t[:4]).update(x[4:], t[4:])
                        return m.compute()
                    yield f"meter_ce|{b}|{rule}|w={int(weighted)}|eps={eps}|{dt}", meter_ce
    for rule in ("plain", "some_ignored", "all_ignored"):
        def meter_soft(name, rule=rule):
            rng = rng_for(name)
            x = logits(rng, shape, "float32")
            p = probs(rng, shape, "float32")
            m = meters.CrossEntropyMeter(backend=b)
            m.update(x[:4], p[:4]).update(x[4:], p[4:])
            return m.compute()
        yield f"meter_ce_soft|{b}|{rule}", meter_soft

        def meter_ppl(name, rule=rule):
            rng = rng_for(name)
            x = logits(rng, shape, "float32")
            t = targets(rng, shape[:-1], v, rule)
            m = meters.Perplexity(backend=b)
            m.update(x[:4], t[:4]).update(x[4:], t[4:])
            return m.compute()
        yield f"meter_ppl|{b}|{rule}", meter_ppl

        def meter_ev(name, rule=rule):
            rng = rng_for(name)
            x = logits(rng, shape, "float64")
            z = logits(rng, shape, "float64")
            t = targets(rng, shape[:-1], v, rule)
            m = meters.Evaluator(topk=(1, 2), z_loss=0.01, backend=b)
            m.update(x[:4], t[:4], z[:4]).update(x[4:], t[4:])
            return m.compute()
        yield f"meter_ev|{b}|{rule}", meter_ev
    for red in ("none", "mean", "sum"):
        for prior in ("std", "arrays", "floats"):
            def gkl(name, red=red, prior=prior):
                rng = rng_for(name)
                mu, lv = rng.standard_normal((2, 4, 5)).astype(np.float32)
                pri = {"std": (), "arrays": (rng.standard_normal(5), rng.standard_normal((4, 5))),
                       "floats": (0.5, -0.25)}[prior]
                return fd.gaussian_kl(mu, lv, *pri, reduction=red)
            if b == "numpy":
                yield f"gaussian_kl|{red}|{prior}", gkl
    if b == "cuda":
        yield from _device_cases(fd)
        return
    from fastdiv import states
    for rule in ("plain", "some_ignored", "all_ignored"):
        for ref in (False, True):
            def st(name, rule=rule, ref=ref):
                rng = rng_for(name)
                x = logits(rng, shape, "float32")
                z = logits(rng, shape, "float32") if ref else None
                t = targets(rng, shape[:-1], v, rule)
                parts = [states.row_state(x[:, a:c], offset=a, target=t, topk=(1, 3),
                                          reference_shard=None if z is None else z[:, a:c], backend=b)
                         for a, c in ((0, 10), (10, 20), (20, v))]
                merged = states.merge(states.merge(parts[0], parts[1]), parts[2])
                return states.finalize(merged, topk=(1, 3), z_loss=0.1, n_classes=v)
            yield f"states|{b}|{rule}|ref={int(ref)}", st
    try:
        import dask.array as da
        import fastdiv.dask as fdd
    except ImportError:
        return
    for split in (False, True):
        for rule in ("plain", "some_ignored", "all_ignored", "empty"):
            for red in ("none", "mean", "sum"):
                for weighted in ((False, True) if not split else (False,)):
                    def dce(name, split=split, rule=rule, red=red, weighted=weighted):
                        rng = rng_for(name)
                        n = 0 if rule == "empty" else shape[0]
                        x = logits(rng, (n, v), "float32")
                        t = targets(rng, (n,), v, "plain" if rule == "empty" else rule)
                        w = rng.uniform(0.2, 2, v) if weighted else None
                        lx = da.from_array(x, chunks=(4, 12 if split else -1))
                        return fdd.cross_entropy(lx, da.from_array(t, chunks=4), reduction=red, weight=w,
                                                 backend=b).compute()
                    yield f"dask_cross_entropy|{b}|split={int(split)}|{rule}|red={red}|w={int(weighted)}", dce
            for red in ("none", "mean", "sum"):
                def dkl(name, split=split, rule=rule, red=red):
                    rng = rng_for(name)
                    n = 0 if rule == "empty" else shape[0]
                    x, z = logits(rng, (n, v), "float64"), logits(rng, (n, v), "float64")
                    c = (4, 12 if split else -1)
                    return (fdd.kl_div(da.from_array(x, chunks=c), da.from_array(z, chunks=c), reduction=red,
                                       backend=b).compute(),
                            fdd.entropy(da.from_array(x, chunks=c), reduction=red, backend=b).compute(),
                            fdd.logsumexp(da.from_array(x, chunks=c), backend=b).compute())
                if rule in ("plain", "empty"):
                    yield f"dask_kl_entropy_lse|{b}|split={int(split)}|{rule}|red={red}", dkl
            def dev(name, split=split, rule=rule):
                rng = rng_for(name)
                n = 0 if rule == "empty" else shape[0]
                x, z = logits(rng, (n, v), "float32"), logits(rng, (n, v), "float32")
                t = targets(rng, (n,), v, "plain" if rule == "empty" else rule)
                c = (4, 12 if split else -1)
                res = fdd.evaluate(da.from_array(x, chunks=c), da.from_array(t, chunks=4), topk=(1, 3),
                                   reference=da.from_array(z, chunks=c), z_loss=0.1, backend=b)
                return res.compute()
            yield f"dask_evaluate|{b}|split={int(split)}|{rule}", dev


def _device_cases(fd):
    """numba device arrays on the cuda backend: results and reductions stay on the device."""
    from numba import cuda

    for rule in ("plain", "some_ignored", "all_ignored"):
        for red in ("none", "mean", "sum"):
            for weighted in (False, True):
                def dce(name, rule=rule, red=red, weighted=weighted):
                    rng = rng_for(name)
                    x = logits(rng, (5, 9), "float32", edges=False)
                    t = targets(rng, (5,), 9, rule)
                    w = rng.uniform(0.2, 2, 9).astype(np.float32) if weighted else None
                    return fd.cross_entropy(cuda.to_device(x), cuda.to_device(t), reduction=red,
                                            weight=None if w is None else cuda.to_device(w))
                yield f"cuda_device|cross_entropy|{rule}|red={red}|w={int(weighted)}", dce
        def dsoft(name, rule=rule):
            rng = rng_for(name)
            n = 0 if rule == "all_ignored" else 5
            x, p = logits(rng, (n, 9), "float32", edges=False), probs(rng, (n, 9), "float32")
            return fd.cross_entropy(cuda.to_device(x), cuda.to_device(p))
        yield f"cuda_device|cross_entropy_soft|{rule}|red=mean", dsoft

        def dkl(name, rule=rule):
            rng = rng_for(name)
            x, z = logits(rng, (5, 9), "float32", edges=False), logits(rng, (5, 9), "float32", edges=False)
            return fd.kl_div(cuda.to_device(x), cuda.to_device(z)), fd.entropy(cuda.to_device(x), reduction="sum")
        if rule == "plain":
            yield "cuda_device|kl_entropy", dkl


# --------------------------------------------------------------------------- run / save / compare


def flatten(result, prefix="r"):
    """{key: ndarray} of a result (numpy scalar/array, tuple, dict, Evaluation, device array)."""
    if result is None:
        return {prefix: np.array("None")}
    if hasattr(result, "copy_to_host"):
        return {prefix + "@device": result.copy_to_host()}
    if hasattr(result, "keys") and hasattr(result, "aggregates"):        # Evaluation
        out = {}
        for k in result.keys():
            out.update(flatten(result[k], f"{prefix}.{k}"))
        return out
    if isinstance(result, dict):
        out = {}
        for k, v in result.items():
            out.update(flatten(v, f"{prefix}.{k}"))
        return out
    if isinstance(result, tuple):
        out = {}
        fields = getattr(result, "_fields", None) or [str(i) for i in range(len(result))]
        for f, v in zip(fields, result):
            out.update(flatten(v, f"{prefix}.{f}"))
        return out
    if isinstance(result, (float, int, bool)):
        return {prefix + f"@{type(result).__name__}": np.array(result)}
    return {prefix: np.asarray(result)}


def run(name, thunk):
    rec = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = thunk(name)
            rec["values"] = {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in flatten(res).items()}
        except Exception as exc:  # recorded: an error is a result too
            rec["error"] = (type(exc).__name__, str(exc))
    rec["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught
                              if not issubclass(w.category, (DeprecationWarning,))
                              and "NumbaPerformanceWarning" not in w.category.__name__
                              and "Grid size" not in str(w.message)})
    return rec


def small_cuda_blocks():
    from fastdiv._cuda import evaluate as E
    from fastdiv._cuda import kernels as K

    for name, value in dict(SMALL_BLOCK=32, GROUP_BLOCK=64, BLOCK=64, RED_BLOCK=32, RED_CHUNK=64,
                            TILE_ROWS=32).items():
        setattr(K, name, value)
    E.BLOCK = 4


def save(path, backends, only=None):
    import fastdiv

    print(f"fastdiv from {fastdiv.__file__}", file=sys.stderr)
    out = {}
    t0 = time.time()
    for b in backends:
        tiny = b == "cuda"
        if tiny:
            small_cuda_blocks()
        for name, thunk in cases((b,), tiny):
            if only and not re.search(only, name):
                continue
            out[name] = run(name, thunk)
        print(f"{b}: {sum(1 for k in out if f'{b}|' in k)} cases, {time.time() - t0:.0f} s", file=sys.stderr)
    with open(path, "wb") as f:
        pickle.dump(out, f)


def expected(name):
    """Every (reason, kind) of ``EXPECTED`` whose pattern matches ``name``, in order."""
    return [(why, kind) for pattern, why, kind in EXPECTED if re.search(pattern, name)]


def _array(v):
    dt, shape, raw = v
    return np.frombuffer(raw, dtype=np.dtype(dt)).reshape(shape).astype(np.float64)


#: "near0": how far a value far below 1 may move, at the scale of 1 (``|a - b| <= NEAR0 (1 + |a|)``):
#: a few epsilons of the compute dtype (float64 cases; float32 for float32 and 16-bit input)
NEAR0 = {"float64": 1e-14, "float32": 5e-7}


def _within(name, a, b, kind):
    """Whether arrays ``a`` and ``b`` differ only as ``kind`` allows: ``rounding`` (the compare's
    relative bound, see ``_size``) or ``near0`` (also ``NEAR0`` at the scale of 1); NaN and the
    infinities at the same places (a NaN's sign is not compared)."""
    fa = np.isfinite(a)
    if a.shape != b.shape or not np.array_equal(fa, np.isfinite(b)) or not np.array_equal(a[~fa], b[~fa],
                                                                                            equal_nan=True):
        return False
    a, b = a[fa], b[fa]
    rel = 1e-13 if "float64" in name else 2e-6
    ok = np.abs(a - b) <= rel * np.abs(a)
    if kind == "near0":
        ok |= np.abs(a - b) <= NEAR0["float64" if "float64" in name else "float32"] * (1.0 + np.abs(a))
    return bool(ok.all())


def _difference_is(kind, ra, rb, name=""):
    """Whether the difference between two records is of the expected ``kind``."""
    va, vb = ra.get("values") or {}, rb.get("values") or {}
    if kind == "refused":
        return "values" in ra and rb.get("error", ("",))[0] == "ValueError" and "ignore_index" in rb["error"][1]
    if kind == "accepted":
        return ra.get("error", ("",))[0] == "TypeError" and "values" in rb
    if ra.get("error") != rb.get("error") or set(va) != set(vb):
        return False
    emptied = False
    for k in va:
        if va[k] == vb[k]:
            continue
        if va[k][0][1] in "OUS":
            return False
        a, b = _array(va[k]), _array(vb[k])
        if kind == "empty_nan":
            if a.size == 1 and a.item() == 0.0 and np.isnan(b.item()):
                emptied = True
            elif not _within(name, a, b, "rounding"):       # an lse or z_loss beside it (#18)
                return False
        if kind in ("rounding", "near0") and not _within(name, a, b, kind):
            return False
        if kind == "close" and not (a.shape == b.shape and np.allclose(a, b, rtol=2e-6, atol=0, equal_nan=True)):
            return False
    return emptied or kind != "empty_nan"


def _size(name, ra, rb):
    """How large an unexpected difference is: ``rounding`` (every value within 2e-6 relative,
    1e-13 for float64 cases, the same NaN and infinities), ``larger``, ``special`` (NaN or
    infinities moved, shapes differ) or ``error`` (an exception or the result's fields differ)."""
    va, vb = ra.get("values") or {}, rb.get("values") or {}
    if ra.get("error", (None,))[0] != rb.get("error", (None,))[0] or set(va) != set(vb):
        return "error"
    bound, worst = (1e-13 if "float64" in name else 2e-6), 0.0
    for k in va:
        if va[k] == vb[k] or va[k][0][1] in "OUS":
            continue
        a, b = _array(va[k]), _array(vb[k])
        fa = np.isfinite(a)
        if a.shape != b.shape or not np.array_equal(fa, np.isfinite(b)) or not np.array_equal(a[~fa], b[~fa],
                                                                                                equal_nan=True):
            return "special"
        if fa.any():
            worst = max(worst, float(np.max(np.abs(a[fa] - b[fa]) / np.maximum(np.abs(a[fa]), 1e-300))))
    return "rounding" if worst <= bound else "larger"


def compare(a_path, b_path, verbose=False):
    a, b = (pickle.load(open(p, "rb")) for p in (a_path, b_path))
    same = differ_expected = 0
    failures, notes, kinds = [], [], {}
    sizes = collections.Counter()
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            failures.append(f"{name}: only in {'after' if name not in a else 'before'}")
            continue
        ra, rb = a[name], b[name]
        diff = []
        if "error" in ra or "error" in rb:
            if ra.get("error", (None,))[0] != rb.get("error", (None,))[0]:
                diff.append(f"error {ra.get('error')} -> {rb.get('error')}")
            elif ra.get("error") != rb.get("error"):
                notes.append(f"{name}: message {ra['error'][1]!r} -> {rb['error'][1]!r}")
        if ra.get("values") != rb.get("values"):
            va, vb = ra.get("values") or {}, rb.get("values") or {}
            for k in sorted(set(va) | set(vb)):
                if va.get(k) != vb.get(k):
                    diff.append(f"{k}: {_show(va.get(k))} -> {_show(vb.get(k))}")
        if ra["warnings"] != rb["warnings"]:
            notes.append(f"{name}: warnings {ra['warnings']} -> {rb['warnings']}")
        if not diff:
            same += 1
            continue
        why = next((w for w, kind in expected(name) if _difference_is(kind, ra, rb, name)), None)
        if why:
            differ_expected += 1
            kinds[why] = kinds.get(why, 0) + 1
            if verbose:
                print(f"EXPECTED {name} ({why}): {'; '.join(diff)[:300]}")
        else:
            failures.append(f"{name}: {'; '.join(diff)[:400]}")
            sizes[_size(name, ra, rb)] += 1
    for line in failures:
        print("DIFFERS", line)
    if verbose:
        for line in notes:
            print("NOTE", line)
    for why, n in kinds.items():
        print(f"expected: {n:5d}  {why}")
    print(f"cases={len(set(a) | set(b))} identical={same} expected_differences={differ_expected} "
          f"unexpected={len(failures)} notes={len(notes)}")
    if sizes:
        print("unexpected, by size: " + ", ".join(f"{k}={n}" for k, n in sorted(sizes.items())))
    return 1 if failures else 0


def _show(v):
    if v is None:
        return "absent"
    dt, shape, raw = v
    arr = np.frombuffer(raw, dtype=np.dtype(dt)).reshape(shape) if dt[1] not in "OUS" else raw
    return f"{dt}{list(shape)} {np.array2string(np.asarray(arr), threshold=6)}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--save", metavar="PATH")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--backends", default=",".join(CPU + ("cuda",)))
    ap.add_argument("--only", help="regex: run only the cases whose name matches")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare, verbose=args.verbose))
    if args.save:
        backends = [b for b in args.backends.split(",") if b]
        if "cuda" in backends and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
            print("note: cuda runs on a real GPU here (NUMBA_ENABLE_CUDASIM is not 1)", file=sys.stderr)
        save(args.save, backends, args.only)
        return
    ap.error("give --save PATH or --compare BEFORE AFTER")


if __name__ == "__main__":
    main()
