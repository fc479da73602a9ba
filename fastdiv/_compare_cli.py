"""``fastdiv compare``: a model's logits against a base's, from files, with CI gates.

The files are read like ``fastdiv eval`` reads them (``fastdiv._files``, memory-mapped, row
chunks of ``--chunk-mb``), each chunk pair going to ``fastdiv.meters.Comparator``; the report
is :meth:`fastdiv.Comparison.to_dict`, printed as llama.cpp's perplexity tool prints its KL
statistics, and optionally written as JSON, Markdown and a plot (matplotlib).

``--fail-if "PATH OP NUMBER"`` gates on the JSON: ``PATH`` is a dotted path into it (``kld.mean``,
``ppl.ratio``, ``kld.quantiles.99.9``, ``topk_agreement.5``, ``kld_by_confidence.9``), ``OP``
one of ``<``, ``<=``, ``>``, ``>=``.  A condition that holds is a failure; a value that is NaN
or null fails too (a gate never passes on a number it could not compare).

Exit status: 0 every gate passed, 1 bad input (one line naming the file), 2 bad options,
3 a gate failed (each failed condition on stderr with its value).
"""
from __future__ import annotations

import json
import math
import operator
import os
import re
import sys
import time
import warnings

import numpy as np

from . import _compact, _lazy, _registry, api
from ._files import open_rows, FileFormatError
from ._eval_cli import (EvalError, Progress, _check_float, _check_targets, _open, add_head_options, add_run_options,
                        head_option_error, open_logits)
from .comparison import Comparison, _se, compare
from .meters import Comparator

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_GATE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class OptionError(Exception):
    """A bad option value: reported on stderr with exit status 2."""


# --------------------------------------------------------------------------- gates


def parse_gate(expr):
    """``"kld.mean > 0.01"`` -> ``(path segments, op string, number)``; OptionError if malformed."""
    m = _GATE.match(expr)
    if not m:
        raise OptionError(f"--fail-if {expr!r}: expected PATH OP NUMBER, e.g. \"kld.mean > 0.01\" "
                          f"(OP one of <, <=, >, >=)")
    return m.group(1).split("."), m.group(2), float(m.group(3))


def lookup(doc, segments):
    """The value at a dotted path of ``doc``; segments are joined back with dots where a key
    holds one (``quantiles.99.9``) and are list indices in lists.  KeyError if absent."""
    node, i = doc, 0
    while i < len(segments):
        if isinstance(node, list):
            try:
                node, i = node[int(segments[i])], i + 1
            except (ValueError, IndexError):
                raise KeyError(segments[i]) from None
            continue
        if node is None:                             # ppl / delta_p without targets
            return None
        if not isinstance(node, dict):
            raise KeyError(".".join(segments[i:]))
        for j in range(len(segments), i, -1):       # the longest key first: "99.9" before "99"
            key = ".".join(segments[i:j])
            if key in node:
                node, i = node[key], j
                break
        else:
            raise KeyError(segments[i])
    return node


def check_gate_paths(gates, template):
    """Every gate's path must name a number in a report shaped like ``template`` (before the run)."""
    for expr, (path, _op, _num) in gates:
        try:
            value = lookup(template, path)
        except KeyError:
            top = ", ".join(template)
            raise OptionError(f"--fail-if {expr!r}: no {'.'.join(path)!r} in the report (top-level keys: {top})") \
                from None
        if value is None:
            raise OptionError(f"--fail-if {expr!r}: {'.'.join(path)} is null without --targets")
        if isinstance(value, (dict, list)):
            raise OptionError(f"--fail-if {expr!r}: {'.'.join(path)} is not a number; its keys: "
                              f"{', '.join(map(str, value if isinstance(value, dict) else range(len(value))))}")


def failed_gates(gates, doc):
    """``[(expr, value)]`` of the conditions that hold (NaN and null count as failed)."""
    failed = []
    for expr, (path, op, num) in gates:
        value = lookup(doc, path)
        if value is None or (isinstance(value, float) and math.isnan(value)) or OPS[op](value, num):
            failed.append((expr, value))
    return failed


def _template(with_target, topk):
    """A report of the right shape (for checking gate paths before reading the files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        z = np.zeros((2, 2))
        return compare(z, z, np.zeros(2, dtype=np.int64) if with_target else None, topk=topk,
                       backend="numpy").to_dict()


# --------------------------------------------------------------------------- the run


def _check_target_file(targets, logits):
    if targets.dtype.kind not in "iu":
        raise EvalError(f"--targets: {targets.label} has dtype {targets.dtype}; expected integer class indices")
    if targets.shape != logits.shape[:-1] and targets.shape != (logits.rows,):
        raise EvalError(f"--targets: {targets.label} has shape {targets.shape}, but --logits {logits.label} has "
                        f"shape {logits.shape} ({logits.rows} rows); expected {logits.shape[:-1]} or "
                        f"({logits.rows},)")


def _check_logits_file(logits):
    _check_float("logits", logits)
    if len(logits.shape) < 1 or logits.shape[-1] < 1:
        raise EvalError(f"--logits: {logits.label} has shape {logits.shape}; expected (..., V) with V >= 1")


def _open_compact(path, meta, logits):
    """A compact reference's tensors as row sources, checked against ``logits``."""
    names = ["topk_indices", "topk_logprobs", "tail_logprob"]
    if meta.get("targets") == "1":
        names += ["targets", "target_logprob"]
    try:
        srcs = {n: open_rows(f"{path}:{n}", role="base", row_ndim=1 if n.startswith("topk") else 0) for n in names}
    except FileFormatError as exc:
        raise EvalError(f"--base: {exc}") from None
    v = int(meta["vocab"])
    rows = srcs["topk_indices"].rows
    if v != logits.shape[-1] or rows != logits.rows:
        what = "vocabulary sizes differ" if v != logits.shape[-1] else "row counts differ"
        raise EvalError(f"--base: {path} is a compact reference of {rows} rows over {v} classes, but --logits "
                        f"{logits.label} has shape {logits.shape}: {what}")
    return srcs


def compare_files(base_spec, logits_spec, targets_spec=None, *, topk=(1, 5), ignore_index=-100, backend="auto",
                  chunk_bytes=64 << 20, progress=False):
    """The chunk loop: ``(Comparison, info dict)``.  Raises :class:`EvalError` on bad input.

    ``base_spec`` may be a compact reference (``fastdiv reference``): its rows then come with
    their targets, and KLD, reverse KLD and JS are the coarse-grained lower bounds."""
    logits = _open(logits_spec, "logits", 1)
    _check_logits_file(logits)
    meta = _compact.read_metadata(base_spec)
    compact = None
    if meta is not None:
        compact = _open_compact(base_spec, meta, logits)
        ignore_index = int(meta["ignore_index"])
        base = None
    else:
        base = _open(base_spec, "base", 1)
        _check_float("base", base)
        if base.shape != logits.shape:
            what = "vocabulary sizes differ" if base.shape[-1:] != logits.shape[-1:] else "row counts differ"
            raise EvalError(f"--base: {base.label} has shape {base.shape}, but --logits {logits.label} has shape "
                            f"{logits.shape}: {what}")
    targets = _open(targets_spec, "targets", 0) if targets_spec else None
    if targets is not None:
        _check_target_file(targets, logits)
    v = logits.shape[-1]
    bytes_per_row = logits.row_bytes + (base.row_bytes if base is not None else
                                         sum(src.row_bytes for src in compact.values()))
    step = max(1, int(chunk_bytes // max(1, bytes_per_row)))
    meter = Comparator(ignore_index=ignore_index, topk=topk, backend=backend)
    bar = Progress(logits.rows, bytes_per_row, progress)
    t0 = time.perf_counter()
    for r0 in range(0, max(logits.rows, 1), step):       # an empty file is one empty chunk
        r1 = min(r0 + step, logits.rows)
        if compact is not None:
            x = logits.read(r0, r1)             # a head's chunk is materialized: O(chunk) memory
            x = np.asarray(x.materialize() if _lazy.is_lazy(x) else x).reshape(r1 - r0, v)
            ref = {n: np.asarray(src.read(r0, r1)) for n, src in compact.items()}
            cols, rows = _compact.per_row(ref, x, ignore_index=ignore_index, topk=topk, backend=backend)
            meter._add(cols, rows, "targets" in ref)
            bar.update(r1)
            continue
        t = None
        if targets is not None:
            t = np.asarray(targets.read(r0, r1)).astype(np.int64, copy=False)
            _check_targets(t, r0, v, ignore_index, targets.label)
        meter.update(base.read(r0, r1), logits.read(r0, r1), t)
        bar.update(r1)
    bar.update(logits.rows, final=True)
    seconds = time.perf_counter() - t0
    info = {"base": base.label if base is not None else base_spec, "compact": compact is not None,
            "logits": logits.label, "targets": targets.label if targets else None,
            "shape": list(logits.shape), "dtype": str(logits.dtype), "backend": _registry.resolve(backend),
            "seconds": seconds, "GB/s": logits.rows * bytes_per_row / max(seconds, 1e-9) / 1e9}
    return meter.compute(), info


# --------------------------------------------------------------------------- the reports


def _f(x, spec="10.6f"):
    return "nan" if x is None or x != x else format(x, spec)


def _pct_key(q):
    return {"0": "Minimum", "100": "Maximum", "50": "Median"}.get(q, f"{q}%")


def text_report(res: Comparison, d, info):
    """llama.cpp's layout: perplexity statistics, KL divergence statistics, token probability
    statistics, then fastdiv's extras (reverse KLD, JS, top-k agreement, KLD by confidence)."""
    lines = []
    shape = " x ".join(str(s) for s in info["shape"])
    lines.append(f"fastdiv compare: {info['logits']} against {info['base']} ({shape} {info['dtype']}), "
                 f"{d['count']} of {d['rows']} rows counted, backend {info['backend']}, {info['seconds']:.2f} s")
    if info.get("compact"):
        lines.append("(a compact reference: KLD, reverse KLD and JS are those of the top-K + tail distributions, "
                     "lower bounds of the full ones; the rest is exact)")
    if d["ppl"] is not None:
        p = d["ppl"]
        se_m, se_b = _se(res.nll_model), _se(res.nll_base)
        lines += ["", "====== Perplexity statistics ======",
                  f"Mean PPL(Q)                   : {_f(p['model'])} ± {_f(p['model'] * se_m)}",
                  f"Mean PPL(base)                : {_f(p['base'])} ± {_f(p['base'] * se_b)}",
                  f"Cor(ln(PPL(Q)), ln(PPL(base))): {_f(100 * p['nll_correlation'], '6.2f')}%",
                  f"Mean ln(PPL(Q)/PPL(base))     : {_f(p['ln_ratio'])} ± {_f(p['ln_ratio_se'])}",
                  f"Mean PPL(Q)/PPL(base)         : {_f(p['ratio'])} ± {_f(p['ratio_se'])}",
                  f"Mean PPL(Q)-PPL(base)         : {_f(p['diff'])} ± {_f(p['diff_se'])}"]
    k = d["kld"]
    lines += ["", "====== KL divergence statistics ======", f"Mean    KLD: {_f(k['mean'])} ± {_f(k['se'])}"]
    for q in reversed(list(k["quantiles"])):
        lines.append(f"{_pct_key(q):<8}KLD: {_f(k['quantiles'][q])}")
    lines += ["", "====== Token probability statistics ======"]
    if d["delta_p"] is not None:
        dp = d["delta_p"]
        lines.append(f"Mean    Δp: {_f(100 * dp['mean'], '6.3f')} ± {_f(100 * dp['se'], '5.3f')} %")
        for q in reversed(list(dp["quantiles"])):
            lines.append(f"{_pct_key(q):<8}Δp: {_f(100 * dp['quantiles'][q], '6.3f')}%")
        lines.append(f"RMS Δp    : {_f(100 * dp['rms'], '6.3f')} ± {_f(100 * dp['rms_se'], '5.3f')} %")
    s = d["same_top1"]
    lines.append(f"Same top p: {_f(100 * s['mean'], '6.3f')} ± {_f(100 * s['se'], '5.3f')} %")
    for kk, val in d["topk_agreement"].items():
        lines.append(f"Base top-1 in top {kk}: {_f(100 * val, '6.3f')} %")
    lines += ["", "====== More divergences ======"]
    for key, name in (("reverse_kld", "Mean reverse KLD"), ("js", "Mean JS")):
        lines.append(f"{name:<17}: {_f(d[key]['mean'])} ± {_f(d[key]['se'])}   "
                     f"(99%: {_f(d[key]['quantiles']['99'])})")
    counts = res.kld_by_confidence_counts()
    lines += ["", "====== Mean KLD by the base's top-1 probability ======"]
    for i, (mean, n) in enumerate(zip(d["kld_by_confidence"], counts)):
        lines.append(f"[{i / 10:.1f}, {(i + 1) / 10:.1f}{']' if i == 9 else ')'}: {_f(mean)}   ({n} rows)")
    return "\n".join(lines)


def worst_rows(res: Comparison, n):
    """``[{row, kld, ...}]`` of the ``n`` rows with the largest KLD."""
    out = []
    for i in res.worst(n):
        rec = {"row": int(res.row[i]), "kld": float(res.kld[i]), "reverse_kld": float(res.reverse_kld[i]),
               "js": float(res.js[i]), "base_top1_prob": float(res.base_top1_prob[i]),
               "same_top1": bool(res.same_top1[i])}
        if res.with_target:
            rec.update(p_base=float(res.p_base[i]), p_model=float(res.p_model[i]))
        out.append(rec)
    return out


def worst_text(rows):
    head = f"{'row':>10} {'KLD':>12} {'rev. KLD':>12} {'JS':>10} {'base top-1 p':>12} {'same top-1':>10}"
    with_t = rows and "p_base" in rows[0]
    if with_t:
        head += f" {'p_base':>10} {'p_model':>10}"
    lines = ["", f"====== {len(rows)} rows with the largest KLD ======", head]
    for r in rows:
        line = (f"{r['row']:>10} {_f(r['kld'], '12.6f')} {_f(r['reverse_kld'], '12.6f')} {_f(r['js'], '10.6f')} "
                f"{_f(r['base_top1_prob'], '12.4f')} {str(r['same_top1']):>10}")
        if with_t:
            line += f" {_f(r['p_base'], '10.4f')} {_f(r['p_model'], '10.4f')}"
        lines.append(line)
    return "\n".join(lines)


def markdown_report(d, info, worst=None, failed=None):
    """A summary for a CI job's page: the main statistics with ± se, the gates, the worst rows."""
    def pm(a, b, scale=1.0, spec=".6g"):
        return f"{_f(scale * a, spec)} ± {_f(scale * b, '.2g')}"

    lines = [f"### fastdiv compare: `{info['logits']}` against `{info['base']}`", "",
             f"{d['count']} of {d['rows']} rows counted ({' x '.join(map(str, info['shape']))} {info['dtype']}).", "",
             "| statistic | value |", "| --- | --- |"]
    for key, name in (("kld", "KLD(base ‖ model)"), ("reverse_kld", "KLD(model ‖ base)"), ("js", "JS")):
        s = d[key]
        lines.append(f"| mean {name} | {pm(s['mean'], s['se'])} |")
        lines.append(f"| {name} 99 % / 99.9 % / max | {_f(s['quantiles']['99'], '.6g')} / "
                     f"{_f(s['quantiles']['99.9'], '.6g')} / {_f(s['quantiles']['100'], '.6g')} |")
    lines.append(f"| same top-1 | {pm(d['same_top1']['mean'], d['same_top1']['se'], 100, '.3f')} % |")
    for k, v in d["topk_agreement"].items():
        lines.append(f"| base top-1 in model top-{k} | {_f(100 * v, '.3f')} % |")
    if d["ppl"] is not None:
        p = d["ppl"]
        lines.append(f"| PPL(model) / PPL(base) | {pm(p['ratio'], p['ratio_se'])} |")
        lines.append(f"| PPL(model), PPL(base) | {_f(p['model'], '.6g')}, {_f(p['base'], '.6g')} |")
        lines.append(f"| ln(PPL ratio) | {pm(p['ln_ratio'], p['ln_ratio_se'])} |")
    if d["delta_p"] is not None:
        dp = d["delta_p"]
        lines.append(f"| mean Δp | {pm(dp['mean'], dp['se'], 100, '.4f')} % |")
        lines.append(f"| RMS Δp | {pm(dp['rms'], dp['rms_se'], 100, '.4f')} % |")
    if failed is not None:
        lines += ["", "**Gates:** " + ("all passed" if not failed else
                                       "; ".join(f"`{e}` failed (value {_f(v, '.6g')})" for e, v in failed))]
    if worst:
        lines += ["", "Rows with the largest KLD:", "", "| row | KLD | base top-1 p | same top-1 |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {r['row']} | {_f(r['kld'], '.6g')} | {_f(r['base_top1_prob'], '.4f')} | {r['same_top1']} |"
                  for r in worst]
    return "\n".join(lines) + "\n"


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OptionError("--plot needs matplotlib: pip install matplotlib (or the plot extra)") from None
    return plt


def plot(res: Comparison, d, info, path):
    """Histograms and quantile curves of KLD and delta-p, and the mean KLD by the base's top-1
    probability, in one PNG (needs matplotlib)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    kld = res.kld[np.isfinite(res.kld)]

    def quantile_curve(ax, values, name, log):
        s = np.sort(values)
        ax.plot(np.linspace(0, 100, s.size) if s.size > 1 else [50] * s.size, s)
        if log and (s > 0).any():
            ax.set_yscale("log")
        ax.set_xlabel("percentile of rows")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)

    pos = kld[kld > 0]
    if pos.size:
        axes[0][0].hist(np.log10(pos), bins=60)
    axes[0][0].set_xlabel("log10 KLD(base ‖ model)")
    axes[0][0].set_ylabel("rows")
    axes[0][0].set_title(f"KLD: mean {_f(d['kld']['mean'], '.4g')} ± {_f(d['kld']['se'], '.2g')}", fontsize=10)
    quantile_curve(axes[0][1], kld, "KLD", log=True)
    axes[0][1].set_title("KLD quantiles", fontsize=10)
    means, counts = d["kld_by_confidence"], res.kld_by_confidence_counts()
    centers = np.arange(10) / 10 + 0.05
    axes[0][2].bar(centers, [m if m == m else 0.0 for m in means], width=0.09)
    for c, n in zip(centers, counts):
        axes[0][2].annotate(str(n), (c, 0), ha="center", va="bottom", fontsize=7)
    axes[0][2].set_xlabel("base top-1 probability")
    axes[0][2].set_ylabel("mean KLD")
    axes[0][2].set_title("KLD by base confidence (rows per bucket)", fontsize=10)
    if res.delta_p is not None:
        dp = res.delta_p[np.isfinite(res.delta_p)]
        axes[1][0].hist(dp, bins=60)
        axes[1][0].set_yscale("log")
        axes[1][0].set_xlabel("Δp = p_model(target) - p_base(target)")
        axes[1][0].set_ylabel("rows")
        dpd = d["delta_p"]
        axes[1][0].set_title(f"Δp: mean {_f(dpd['mean'], '.3g')}, RMS {_f(dpd['rms'], '.3g')}", fontsize=10)
        quantile_curve(axes[1][1], dp, "Δp", log=False)
        axes[1][1].set_title("Δp quantiles", fontsize=10)
    else:
        for ax in axes[1][:2]:
            ax.text(0.5, 0.5, "Δp needs --targets", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    axes[1][2].set_axis_off()
    lines = [f"rows {d['rows']}, counted {d['count']}",
             f"same top-1 {_f(100 * d['same_top1']['mean'], '.3f')} ± {_f(100 * d['same_top1']['se'], '.2g')} %"]
    lines += [f"base top-1 in top {k}: {_f(100 * v, '.3f')} %" for k, v in d["topk_agreement"].items()]
    if d["ppl"] is not None:
        lines.append(f"PPL ratio {_f(d['ppl']['ratio'], '.5g')} ± {_f(d['ppl']['ratio_se'], '.2g')}")
    lines.append(f"JS {_f(d['js']['mean'], '.4g')}, reverse KLD {_f(d['reverse_kld']['mean'], '.4g')}")
    axes[1][2].text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=9,
                    transform=axes[1][2].transAxes)
    fig.suptitle(f"{info['logits']} against {info['base']}", fontsize=11)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise EvalError(f"cannot write --plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def json_safe(x):
    """NaN and infinities as null (strict JSON), recursively."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# --------------------------------------------------------------------------- the command


def add_parser(sub):
    """Register ``fastdiv compare`` on the ``argparse`` sub-command set ``sub``."""
    p = sub.add_parser(
        "compare", help="a model's logits against a base model's: KL, JS, top-1 agreement, PPL ratio, with CI gates",
        description="Compares the distributions of --logits with those of --base row by row (the statistics of "
                    "llama.cpp's perplexity tool in KL-divergence mode, with their standard errors, exact quantiles, "
                    "reverse KL, JS, top-k agreement and KLD by the base's confidence; with --targets also the "
                    "perplexity ratio and the target's probability shift). Files as in fastdiv eval (.npy, .npz, "
                    ".safetensors; FILE:NAME names an array), memory-mapped and read in chunks. Rows whose target is "
                    "--ignore-index are left out. --fail-if \"PATH OP NUMBER\" gates on the JSON report (PATH dotted, "
                    "e.g. kld.mean, ppl.ratio, kld.quantiles.99.9, topk_agreement.5; OP one of <, <=, >, >=); a NaN or "
                    "null value fails. Exit status: 0 pass, 1 bad input, 2 bad options (--plot without matplotlib "
                    "included), 3 a gate failed.")
    p.add_argument("--base", required=True, metavar="FILE[:NAME]", help="the base model's logits, shape (..., V)")
    p.add_argument("--logits", metavar="FILE[:NAME]",
                   help="the compared model's logits, same shape (or --hidden with --lm-head)")
    add_head_options(p)
    p.add_argument("--targets", metavar="FILE[:NAME]",
                   help="integer class indices, shape logits.shape[:-1] (or flat): adds perplexity and delta-p")
    p.add_argument("--topk", nargs="*", type=int, default=[1, 5], metavar="K",
                   help="k values: the share of rows whose base top-1 is in the model's top k (default: 1 5)")
    add_run_options(p, "base + logits")
    p.add_argument("--json", metavar="OUT.json", help="write the report as JSON (NaN as null)")
    p.add_argument("--markdown", metavar="OUT.md", help="write a Markdown summary (for a CI job's summary page)")
    p.add_argument("--plot", metavar="OUT.png",
                   help="histograms and quantile curves of KLD and delta-p, KLD by base confidence (needs matplotlib)")
    p.add_argument("--worst", type=int, default=0, metavar="N", help="list the N rows with the largest KLD")
    p.add_argument("--fail-if", action="append", default=[], metavar="EXPR",
                   help='exit 3 if EXPR holds, e.g. "kld.mean > 0.01" (repeatable)')
    return p


def add_reference_parser(sub):
    """Register ``fastdiv reference`` on the ``argparse`` sub-command set ``sub``."""
    p = sub.add_parser(
        "reference", help="store a base model's logits compactly (top-K classes per row) for fastdiv compare",
        description="Writes a compact reference of --logits, the base that fastdiv compare then reads: per row the K most probable "
                    "classes and their log-probabilities, the log of the remaining mass and, with --targets, the "
                    "targets and their log-probabilities (exact even outside the top K), as safetensors (12 K + 8 "
                    "bytes per row, + 16 with targets). Compared against it, same_top1, top-k agreement, delta_p "
                    "and the perplexities are exact; KLD, reverse KLD and JS are those of the top-K + tail "
                    "distributions, lower bounds of the full ones (exact for K >= V - 1). Exit status: 0 on success, "
                    "1 for bad input, 2 for bad options.")
    p.add_argument("--logits", required=True, metavar="FILE[:NAME]", help="the base model's logits, shape (..., V)")
    p.add_argument("--targets", metavar="FILE[:NAME]", help="integer class indices, shape logits.shape[:-1] (or flat)")
    p.add_argument("--topk", type=int, default=64, metavar="K", help="classes kept per row (default 64)")
    p.add_argument("--out", required=True, metavar="REF.safetensors", help="the file to write")
    add_run_options(p, "logits")
    return p


def run_reference(args):
    """``fastdiv reference`` with parsed ``args``; returns the exit status."""
    name = "fastdiv reference"
    if args.topk < 1 or args.chunk_mb <= 0 or (args.threads is not None and args.threads < 1):
        print(f"{name}: error: --topk, --chunk-mb and --threads must be positive", file=sys.stderr)
        return 2
    if os.path.splitext(args.out)[1].lower() != ".safetensors":
        print(f"{name}: error: --out must name a .safetensors file, got {args.out}", file=sys.stderr)
        return 2
    writer = None
    try:
        if args.threads is not None:
            api.set_num_threads(args.threads)
        logits = _open(args.logits, "logits", 1)
        _check_logits_file(logits)
        targets = _open(args.targets, "targets", 0) if args.targets else None
        if targets is not None:
            _check_target_file(targets, logits)
        v = logits.shape[-1]
        step = max(1, int(args.chunk_mb * 1e6 // max(1, logits.row_bytes)))
        try:
            writer = _compact.Writer(args.out, logits.rows, v, args.topk, targets is not None, args.ignore_index)
        except OSError as exc:
            raise EvalError(f"cannot write --out {args.out}: {exc.strerror or exc}") from None
        bar = Progress(logits.rows, logits.row_bytes, args.progress or sys.stderr.isatty())
        for r0 in range(0, logits.rows, step):
            r1 = min(r0 + step, logits.rows)
            t = None
            if targets is not None:
                t = np.asarray(targets.read(r0, r1)).astype(np.int64, copy=False)
                _check_targets(t, r0, v, args.ignore_index, targets.label)
            x = logits.read(r0, r1)             # a head's chunk is materialized: O(chunk) memory
            x = np.asarray(x.materialize() if _lazy.is_lazy(x) else x).reshape(r1 - r0, v)
            writer.write(r0, _compact.build(x, t, args.topk, args.ignore_index, args.backend))
            bar.update(r1)
        bar.update(logits.rows, final=True)
        writer.close()
        writer = None
    except EvalError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except (_registry.BackendUnavailable, ValueError, TypeError, OSError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if writer is not None:                  # a failed run leaves no half-written reference
            writer.close()
            os.remove(args.out)
    size = os.path.getsize(args.out)
    dense = logits.rows * v * 4
    print(f"{name}: {args.out}: {logits.rows} rows, top {min(args.topk, v)} of {v} classes, {size / 1e6:.3f} MB "
          f"({dense / max(size, 1):.0f}x smaller than float32 logits)")
    return 0


def _write(path, text, what):
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        raise EvalError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def run(args):
    """``fastdiv compare`` with parsed ``args``; returns the exit status."""
    name = "fastdiv compare"
    try:
        if any(k < 1 for k in args.topk) or len(set(args.topk)) != len(args.topk):
            raise OptionError(f"--topk values must be distinct and >= 1, got {args.topk}")
        if args.chunk_mb <= 0 or (args.threads is not None and args.threads < 1) or args.worst < 0:
            raise OptionError("--chunk-mb and --threads must be positive, --worst >= 0")
        if head_option_error(args):
            raise OptionError(head_option_error(args))
        if args.plot:
            _pyplot()
        meta = _compact.read_metadata(args.base)
        if meta is not None and args.targets:
            raise OptionError(f"--targets: {args.base} is a compact reference, which holds its own targets; "
                              "leave --targets out")
        with_target = args.targets is not None if meta is None else meta.get("targets") == "1"
        gates = [(expr, parse_gate(expr)) for expr in args.fail_if]
        check_gate_paths(gates, _template(with_target, tuple(args.topk)))
    except OptionError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.threads is not None:
            api.set_num_threads(args.threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res, info = compare_files(args.base, open_logits(args), args.targets, topk=tuple(args.topk),
                                      ignore_index=args.ignore_index, backend=args.backend,
                                      chunk_bytes=int(args.chunk_mb * 1e6),
                                      progress=args.progress or sys.stderr.isatty())
            d = res.to_dict()
        failed = failed_gates(gates, d)
        worst = worst_rows(res, args.worst) if args.worst else []
        print(text_report(res, d, info))
        if worst:
            print(worst_text(worst))
        if d["count"] == 0:
            print(f"{name}: note: no row counted (every target equals --ignore-index); the statistics are NaN",
                  file=sys.stderr)
        if args.json:
            _write(args.json, json.dumps(json_safe(d), indent=2) + os.linesep, "--json")
        if args.markdown:
            _write(args.markdown, markdown_report(d, info, worst, failed if gates else None), "--markdown")
        if args.plot:
            plot(res, d, info, args.plot)
    except EvalError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except (_registry.BackendUnavailable, ValueError, TypeError, OSError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return 130
    for expr, value in failed:
        print(f"{name}: gate failed: {expr} (value {_f(value, '.6g')})", file=sys.stderr)
    if gates and not failed:
        print(f"{name}: {len(gates)} gate(s) passed", file=sys.stderr)
    return 3 if failed else 0
