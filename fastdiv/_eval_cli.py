"""``fastdiv eval``: evaluation metrics over logits stored in files, in row chunks.

The files are memory-mapped (``fastdiv._files``), never loaded whole: each chunk of rows is
read once, its per-row values computed, and only float64 sums kept, so memory is bounded by
the chunk size whatever the file size, and the result does not depend on the chunking beyond
float64 rounding.

Per-chunk work goes through :func:`make_meter` (the one place that decides how chunks become
metrics): a :class:`FileMeter`, the streaming ``fastdiv.meters.Evaluator`` with the command's
extra sums, so each chunk of logits (and of the reference) is read once, by
``fastdiv.evaluate``, and ``compute()`` returns a ``{name: float}`` mapping.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings

import numpy as np

from . import _checks, _registry, api, reduce
from ._files import FileFormatError, RowSource, open_rows
from ._linear import linear
from .meters import Evaluator

BACKENDS = ("auto", "cython", "numba", "numpy", "cuda")


class EvalError(Exception):
    """Bad input to ``fastdiv eval``: reported on stderr with exit status 1, no traceback."""


# --------------------------------------------------------------------------- the metrics


class FileMeter(Evaluator):
    """The command's metrics: :class:`fastdiv.meters.Evaluator` (one ``fastdiv.evaluate`` read
    of each chunk, float64 sums across chunks) plus the sums only the command reports, taken
    from the same per-chunk result.

    Every aggregate is over the rows whose target is not ``ignore_index`` ("tokens"):

    * ``mean_nll`` (the mean cross-entropy, nats) and ``perplexity = exp(mean_nll)``;
    * ``accuracy@k`` for each k: the target's rank ``1 + #{classes with a strictly larger
      logit}`` is at most k (ties count in the target's favour) and the row's softmax is
      defined (a masked target, or a row with NaN or +inf, is never correct);
    * ``mean_entropy`` of the model's softmax, ``mean_logsumexp``;
    * with a reference: ``mean_kl = D(reference || model)`` (how far the model's distribution
      is from the reference's, the distillation direction) and ``mean_reverse_kl = D(model ||
      reference)``.

    NaN in a row makes every mean it enters NaN (nothing is dropped silently).  With no
    tokens at all, the means are NaN.
    """

    def __init__(self, *, topk=(1, 5), ignore_index=-100, backend="auto", reference=False):
        super().__init__(topk=topk, kl_direction="ref||model", ignore_index=ignore_index, backend=backend)
        self.reference = bool(reference)
        self._sums.update(rows=0.0, lse=0.0, reverse_kl=0.0)

    def update(self, logits, targets, reference=None):
        """Add a chunk: ``logits`` (rows, V), ``targets`` (rows,) int, ``reference`` like logits."""
        self._sums["rows"] += len(targets)
        return super().update(logits, targets, reference)

    def _add(self, res, with_reference):
        super()._add(res, with_reference)
        c = np.asarray(res.counted)
        self._sums["lse"] += reduce.counted_sum(res.lse, c)
        if with_reference:
            self._sums["reverse_kl"] += reduce.counted_sum(res.kl_model_ref, c)

    def compute(self):
        """``{name: float}``: rows, tokens and the means described in the class docstring."""
        with warnings.catch_warnings():          # no tokens: the command prints its own note
            warnings.simplefilter("ignore", RuntimeWarning)
            base = super().compute()
        s, n = self._sums, base["count"]
        nan = float("nan")
        out = {"rows": int(s["rows"]), "tokens": n, "mean_nll": base["mean_nll"], "perplexity": base["perplexity"]}
        out.update({f"accuracy@{k}": base[f"accuracy@{k}"] for k in self.topk})
        out.update(mean_entropy=base["mean_entropy"], mean_logsumexp=reduce.mean_of(s["lse"], n))
        if self.reference:
            out.update(mean_kl=base.get("mean_kl", nan), mean_reverse_kl=reduce.mean_of(s["reverse_kl"], n))
        return out


def make_meter(*, topk, ignore_index, backend, reference):
    """The seam between the chunk loop and the metrics: an ``update``/``compute`` meter."""
    return FileMeter(topk=topk, ignore_index=ignore_index, backend=backend, reference=reference)


# --------------------------------------------------------------------------- progress


class Progress:
    """A one-line progress bar on stderr: rows done, rows/s, GB/s read, ETA."""

    def __init__(self, total_rows, bytes_per_row, enabled, stream=None):
        self.total, self.bpr, self.enabled = total_rows, bytes_per_row, enabled
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.width = 0

    def update(self, done, final=False):
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self.last < 0.1:
            return
        self.last = now
        dt = max(now - self.t0, 1e-9)
        rate = done / dt
        frac = done / self.total if self.total else 1.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        line = (f"\r[{bar}] {100 * frac:5.1f}% {done}/{self.total} rows  {rate:,.0f} rows/s  "
                f"{done * self.bpr / dt / 1e9:.2f} GB/s  ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        self.width = max(self.width, len(line))
        self.stream.write(line.ljust(self.width) + ("\n" if final else ""))
        self.stream.flush()


# --------------------------------------------------------------------------- the command


def add_parser(sub):
    """Register ``fastdiv eval`` on the ``argparse`` sub-command set ``sub``."""
    p = sub.add_parser(
        "eval", help="evaluation metrics (mean NLL, perplexity, top-k accuracy, entropy, KL) over array files",
        description="Computes, over the rows whose target is not --ignore-index: mean NLL (cross-entropy, nats), "
                    "perplexity, top-k accuracy (target rank <= k, ties in the target's favour), mean entropy and "
                    "mean log-sum-exp, and with --reference the mean KL both ways (mean_kl = D(reference || model), "
                    "mean_reverse_kl = D(model || reference)). Files: .npy (memory-mapped), .npz (uncompressed "
                    "members memory-mapped, compressed ones streamed) and .safetensors (memory-mapped, read without "
                    "the safetensors package); name an array inside a .npz/.safetensors file as FILE:NAME (without "
                    ":NAME: the file's only array, else the one called like the option: logits, targets, reference). "
                    "Rows are "
                    "processed in chunks of --chunk-mb, sums kept in float64, so files larger than memory work. "
                    "A progress bar (rows, rows/s, GB/s, ETA) goes to stderr on a terminal or with --progress. "
                    "Exit status: 0 on success, 1 for bad input (message on stderr), 2 for bad options.")
    p.add_argument("--logits", metavar="FILE[:NAME]",
                   help="logits, shape (..., V): float16, bfloat16, float32 or float64 (or --hidden with --lm-head)")
    add_head_options(p)
    p.add_argument("--targets", required=True, metavar="FILE[:NAME]",
                   help="integer class indices, shape logits.shape[:-1] (or flat, one per row)")
    p.add_argument("--reference", metavar="FILE[:NAME]", help="a reference model's logits, same shape as --logits")
    p.add_argument("--topk", nargs="*", type=int, default=[1, 5], metavar="K",
                   help="k values for top-k accuracy (default: 1 5; --topk alone: no top-k)")
    add_run_options(p, "logits (+ reference)")
    p.add_argument("--json", metavar="OUT.json", help="also write the metrics and inputs as JSON")
    return p


def add_run_options(p, chunk_of):
    """The options every file-reading command shares (eval, compare, reference): the ignored
    target value, the backend, threads, the chunk size (``chunk_of``: what a chunk holds) and
    the progress bar."""
    p.add_argument("--ignore-index", type=int, default=-100, help="target value of rows left out (padding; default -100)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="fastdiv backend (default auto)")
    p.add_argument("--threads", type=int, help="threads for the compiled CPU backends (default: all CPUs)")
    p.add_argument("--chunk-mb", type=float, default=64.0, help=f"{chunk_of} bytes per chunk, in MB (default 64)")
    p.add_argument("--progress", action="store_true",
                   help="show the progress bar even when stderr is not a terminal (it is shown on a terminal)")


def add_head_options(p):
    """``--hidden`` with ``--lm-head`` (and ``--lm-head-bias``) in place of ``--logits``."""
    p.add_argument("--hidden", metavar="FILE[:NAME]",
                   help="hidden states, shape (..., D), in place of --logits: the logits hidden @ W.T + b of "
                        "--lm-head are computed in blocks of rows and never stored (fastdiv.linear)")
    p.add_argument("--lm-head", metavar="FILE[:NAME]", help="with --hidden: the head's weight, shape (V, D) "
                   "(torch.nn.Linear's layout)")
    p.add_argument("--lm-head-bias", metavar="FILE[:NAME]", help="with --hidden: the head's bias, shape (V,)")


def head_option_error(args):
    """What is wrong with the --logits / --hidden / --lm-head options (exit status 2), or None."""
    if (args.logits is None) == (args.hidden is None):
        return "give either --logits or --hidden (with --lm-head)"
    if (args.hidden is None) != (args.lm_head is None):
        return "--hidden and --lm-head go together"
    if args.lm_head_bias is not None and args.hidden is None:
        return "--lm-head-bias needs --hidden and --lm-head"
    return None


def open_logits(args):
    """The ``--logits`` file, or a row source whose rows are ``fastdiv.linear`` logits of the
    ``--hidden`` rows and the head (read whole: it is V x D)."""
    if args.hidden is None:
        return args.logits
    hidden = _open(args.hidden, "hidden", 1)
    _check_float("hidden", hidden)
    weight = _open(args.lm_head, "lm-head", 1)
    _check_float("lm-head", weight)
    w = np.asarray(weight.read(0, weight.rows))
    b = None
    if args.lm_head_bias is not None:
        bias = _open(args.lm_head_bias, "lm-head-bias", 0)
        _check_float("lm-head-bias", bias)
        b = np.asarray(bias.read(0, bias.rows))
    try:
        probe = linear(hidden.read(0, 0), w, b)
    except ValueError as exc:
        raise EvalError(f"--hidden/--lm-head: {exc} ({hidden.label} has shape {hidden.shape}, {weight.label} "
                        f"{weight.shape})") from None
    v = probe.shape[-1]
    return RowSource(f"{hidden.label} @ {weight.label}.T", tuple(hidden.shape[:-1]) + (v,), probe.dtype, (v,),
                     lambda r0, r1: linear(hidden.read(r0, r1), w, b))


def _open(spec, role, row_ndim):
    if isinstance(spec, RowSource):             # already open (open_logits)
        return spec
    try:
        return open_rows(spec, role=role, row_ndim=row_ndim)
    except FileFormatError as exc:
        raise EvalError(f"--{role}: {exc}") from None
    except OSError as exc:
        raise EvalError(f"--{role}: cannot read {spec}: {exc.strerror or exc}") from None


def _check_float(role, src):
    try:
        _checks.compute_dtype(role, src.dtype)
    except TypeError:
        raise EvalError(f"--{role}: {src.label} has dtype {src.dtype}; expected float16, bfloat16, "
                        "float32 or float64") from None


def _check_inputs(logits, targets, reference):
    _check_float("logits", logits)
    if len(logits.shape) < 1 or logits.shape[-1] < 1:
        raise EvalError(f"--logits: {logits.label} has shape {logits.shape}; expected (..., V) with V >= 1")
    if targets.dtype.kind not in "iu":
        raise EvalError(f"--targets: {targets.label} has dtype {targets.dtype}; expected integer class indices")
    lead = logits.shape[:-1]
    if targets.shape != lead and targets.shape != (logits.rows,):
        what = "row counts differ" if targets.rows != logits.rows else "shapes differ"
        raise EvalError(f"--targets: {targets.label} has shape {targets.shape}, but --logits {logits.label} has "
                        f"shape {logits.shape} ({logits.rows} rows): {what}; expected {lead} or ({logits.rows},)")
    if reference is not None:
        _check_float("reference", reference)
        if reference.shape != logits.shape:
            raise EvalError(f"--reference: {reference.label} has shape {reference.shape}; it must match --logits "
                            f"{logits.label} {logits.shape}")


def _check_targets(t, r0, v, ignore, label):
    bad = ((t < 0) | (t >= v)) & (t != ignore)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise EvalError(f"--targets: {label} row {r0 + k} has class {int(t[k])}, outside [0, {v}) and not "
                        f"--ignore-index {ignore}")


def evaluate_files(logits_spec, targets_spec, reference_spec=None, *, topk=(1, 5), ignore_index=-100,
                   backend="auto", chunk_bytes=64 << 20, progress=False):
    """Run the chunk loop; returns ``(metrics dict, info dict)``.  Raises :class:`EvalError`."""
    logits = _open(logits_spec, "logits", 1)
    targets = _open(targets_spec, "targets", 0)
    reference = _open(reference_spec, "reference", 1) if reference_spec else None
    _check_inputs(logits, targets, reference)
    v = logits.shape[-1]
    bytes_per_row = logits.row_bytes + (reference.row_bytes if reference is not None else 0)
    step = max(1, int(chunk_bytes // max(1, bytes_per_row)))
    meter = make_meter(topk=topk, ignore_index=ignore_index, backend=backend, reference=reference is not None)
    bar = Progress(logits.rows, bytes_per_row, progress)
    t0 = time.perf_counter()
    for r0 in range(0, logits.rows, step):
        r1 = min(r0 + step, logits.rows)
        t = np.asarray(targets.read(r0, r1)).astype(np.int64, copy=False)
        _check_targets(t, r0, v, ignore_index, targets.label)
        meter.update(logits.read(r0, r1), t, reference.read(r0, r1) if reference is not None else None)
        bar.update(r1)
    bar.update(logits.rows, final=True)
    seconds = time.perf_counter() - t0
    info = {"logits": logits.label, "targets": targets.label, "reference": reference.label if reference else None,
            "shape": list(logits.shape), "dtype": str(logits.dtype), "backend": _registry.resolve(backend),
            "chunk_rows": step, "seconds": seconds, "GB/s": logits.rows * bytes_per_row / max(seconds, 1e-9) / 1e9}
    return meter.compute(), info


def run(args):
    """``fastdiv eval`` with parsed ``args``; returns the exit status."""
    if any(k < 1 for k in args.topk):
        print(f"fastdiv eval: error: --topk values must be >= 1, got {args.topk}", file=sys.stderr)
        return 2
    if args.chunk_mb <= 0 or (args.threads is not None and args.threads < 1):
        print("fastdiv eval: error: --chunk-mb and --threads must be positive", file=sys.stderr)
        return 2
    if head_option_error(args):
        print(f"fastdiv eval: error: {head_option_error(args)}", file=sys.stderr)
        return 2
    try:
        if args.threads is not None:
            api.set_num_threads(args.threads)
        metrics, info = evaluate_files(
            open_logits(args), args.targets, args.reference, topk=tuple(dict.fromkeys(args.topk)),
            ignore_index=args.ignore_index, backend=args.backend, chunk_bytes=int(args.chunk_mb * 1e6),
            progress=args.progress or sys.stderr.isatty())
    except EvalError as exc:
        print(f"fastdiv eval: error: {exc}", file=sys.stderr)
        return 1
    except (_registry.BackendUnavailable, ValueError, TypeError, OSError) as exc:
        print(f"fastdiv eval: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nfastdiv eval: interrupted", file=sys.stderr)
        return 130
    shape = " x ".join(str(d) for d in info["shape"])
    print(f"fastdiv eval: {info['logits']} ({shape} {info['dtype']}), {metrics['tokens']} tokens of "
          f"{metrics['rows']} rows, backend {info['backend']}, {info['seconds']:.2f} s ({info['GB/s']:.2f} GB/s)")
    for name, value in metrics.items():
        if name not in ("rows", "tokens"):
            print(f"  {name:<16} {value:.6f}")
    if metrics["tokens"] == 0:
        print("fastdiv eval: note: every target equals --ignore-index; the means are NaN", file=sys.stderr)
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump({"metrics": metrics, "inputs": info}, f, indent=2)
                f.write(os.linesep)
        except OSError as exc:
            print(f"fastdiv eval: error: cannot write --json {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0
