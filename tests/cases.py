"""The one table of cases: every public op x input kind x options, each with its float64
reference and its tolerance, run over backends x dtypes x shape regimes x layouts.

It feeds the correctness tests of every backend (tests/test_cases.py: numba, cython, numpy, and
cuda in numba's CUDA simulator), the fuzz tests (tests/test_fuzz.py draws the inputs, the table
says how to call and what to expect), the bad-input matrix and the guarantees (the rows with
``bad_inputs=True``: tests/bad_inputs.py, tests/test_guarantees.py, tests/memory_probe.py) and
the benchmark suite (the rows with ``bench``: benchmarks/test_bench.py).

Adding an op or an option is adding one ``Case`` row to ``CASES``: how to make its arguments
from logits, how to call it, its reference.  The tier rule (``fast``) decides, in one place,
which cells of the matrix README's test command runs; the rest carry the ``slow`` marker and
run in CI after it (``pytest -m slow``).

Every input is drawn fresh (the seed is printed; replay with FASTDIV_TEST_SEED=<seed>) and
holds the rows every backend must get right: all masked, masked prefix, scattered masks, NaN,
+inf, logits of 1e4, a constant row, one unmasked class, near uniform, a late jump, a
confident row (results near 0), for two-input ops a pair of nearly equal rows (a KL near 0)
and one with a few noisy classes, and among probabilities a negative entry (NaN).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import fastdiv
from fastdiv import _registry
from fastdiv import reference as R

# --------------------------------------------------------------------------- backends

#: Compiled host backends available here, and every host backend (numpy: the reference itself).
COMPILED = [b for b in ("numba", "cython") if _registry.unavailable_reason(b) is None]
ALL_HOST = COMPILED + ["numpy"]
#: Whether the cuda backend runs here (a GPU, or numba's simulator: tests/conftest.py).
CUDA = _registry.unavailable_reason("cuda") is None
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

# --------------------------------------------------------------------------- dtypes, tolerances

try:
    import ml_dtypes
    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # bfloat16 cells are left out without it
    BFLOAT16 = None

#: Input dtypes of the matrix.  Half inputs are computed in float32 (their widening is exact), so
#: they are held to float32's tolerance against the reference on the same half values.
DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)] + ([BFLOAT16] if BFLOAT16 else [])

#: Per compute dtype: tolerance of per-row logsumexp / entropy / cross-entropy (relative, with a
#: small absolute floor for results near 0) and of KL-like results (absolute, times 1 + |KL|).
TOL = {
    np.float32: dict(rtol=1e-5, atol=2e-6, kl=2e-5),
    np.float64: dict(rtol=1e-12, atol=1e-12, kl=1e-12),
}


def compute_dtype(dtype):
    """The dtype the kernels compute and answer in: float64 for float64 (either byte order),
    else float32."""
    d = np.dtype(dtype)
    return np.dtype(np.float64) if d.kind == "f" and d.itemsize == 8 else np.dtype(np.float32)


def assert_rows_close(got, want, dtype, what, kind="rel"):
    """Compare per-row results; NaN must match NaN and inf must match inf exactly."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    tol = TOL[compute_dtype(dtype).type]
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    assert np.array_equal(nan_g, nan_w), f"{what}: NaN rows differ: got {np.flatnonzero(nan_g)}, want {np.flatnonzero(nan_w)}"
    inf_g, inf_w = np.isinf(got), np.isinf(want)
    assert np.array_equal(got[inf_g | inf_w], want[inf_g | inf_w]), f"{what}: inf rows differ"
    ok = ~(nan_g | inf_g | inf_w)
    if kind == "kl":
        err = np.abs(got[ok] - want[ok]) / (1.0 + np.abs(want[ok]))
        bound = tol["kl"]
    else:
        err = np.abs(got[ok] - want[ok]) / (tol["atol"] / tol["rtol"] + np.abs(want[ok]))
        bound = tol["rtol"]
    if err.size:
        k = int(np.argmax(err))
        row = np.flatnonzero(ok)[k]
        assert err[k] <= bound, f"{what}: row {row}: got {got[row]!r}, want {want[row]!r} (err {err[k]:.3g} > {bound})"


# --------------------------------------------------------------------------- shapes

#: The awkward vocabulary sizes: one class, C51's atoms, a prime past a few SIMD widths and
#: chunks, and Llama 3's vocabulary (more than one row chunk, beyond L1 and L2).
V_SHAPES = (1, 51, 1271, 128256)


def rows_for(v):
    """Enough rows for the edge rows plus random ones, few at huge V (keeps tests fast)."""
    return 14 if v > 100_000 else 40


# --------------------------------------------------------------------------- inputs


def make_logits(rng, n, v, dtype, scale=3.0, edges=True):
    """Random logits with the edge rows every backend must handle (when n >= 10)."""
    x = rng.standard_normal((n, v)) * scale + rng.uniform(-5, 5, (n, 1))
    if edges and n >= 10:
        x[0] = -np.inf                                    # every class masked
        x[1, : max(1, v // 2)] = -np.inf                  # masked prefix (the classic NaN bug)
        x[2, rng.random(v) < 0.3] = -np.inf               # scattered masks
        x[3, rng.integers(v)] = np.nan                    # NaN poisons only this row
        x[4, rng.integers(v)] = np.inf                    # +inf: lse = inf, softmax undefined
        x[5] = rng.standard_normal(v) * 1e4               # extreme logits
        x[6] = 7.25                                       # constant row
        if v > 1:
            x[7] = -np.inf
            x[7, rng.integers(v)] = rng.normal()          # a single unmasked class
        x[8] = rng.standard_normal(v) * 1e-3              # near uniform
        x[9, -1] = x[9].max() + 80                        # a jump in the last chunk
    if edges and n >= 12:
        x[10, rng.integers(v)] += 30.0                    # confident: entropy and CE near 0
    return x.astype(dtype)


def make_probs(rng, n, v, dtype, zeros=True):
    """Dirichlet rows, with zero entries and a one-hot row (``zeros``)."""
    p = rng.dirichlet(np.full(v, 0.5), size=n)
    if zeros and v > 2:
        p[:, rng.random(v) < 0.2] = 0.0
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        p[0] = 0.0
        p[0, rng.integers(v)] = 1.0                     # one-hot row
    return p.astype(dtype)


def probs_from(x):
    """softmax of float64 logits rows; rows with no distribution (all masked, NaN, +inf) are 0."""
    with np.errstate(over="ignore"):
        p = np.exp(R.log_softmax_rows(x))
    return np.nan_to_num(p, nan=0.0)


class Source:
    """Where a case's float64 logits come from: ``logits(n, v)``.

    ``edges``: make_logits' awkward rows among random ones (the table's correctness tests);
    without: plain random logits (the "good" arguments of the bad-input matrix, the
    guarantees and the benchmarks).  tests/test_fuzz.py passes its own drawn logits."""

    def __init__(self, rng, edges=True, scale=3.0):
        self.rng, self.edges, self.scale = rng, edges, scale

    def logits(self, n, v):
        return make_logits(self.rng, n, v, np.float64, scale=self.scale, edges=self.edges)


def _as(kind, x, dtype):
    """Float64 logits rows ``x`` given as ``kind`` in ``dtype``."""
    if kind == "logits":
        return x.astype(dtype)
    p = probs_from(x)
    if kind == "probs":
        return p.astype(dtype)
    with np.errstate(divide="ignore"):
        return np.log(p).astype(dtype)


def _pair(src, n, v):
    """Two logits arrays: the second's rows reversed (edge rows meet random ones), its last
    row nearly equal to the first's (a divergence near 0), and the one before too but for a
    few noisy classes (logits ~ -20 moved by N(0, 3): vectors and chunks summed class by
    class, _registry.NEAR_MIXED_SHARE)."""
    x = src.logits(n, v)
    z = src.logits(n, v)[::-1].copy()
    if n >= 12:
        z[-1] = x[-1] + 1e-3 * src.rng.standard_normal(v)
    if n >= 14:
        noisy = np.arange(3 % v, v, 190 if v > 1000 else 20)
        x[-2, noisy] = -20 + src.rng.standard_normal(noisy.size)
        z[-2] = x[-2] + 1e-3 * src.rng.standard_normal(v)
        z[-2, noisy] += 3 * src.rng.standard_normal(noisy.size)
    return x, z


def targets(rng, x, ignore_index=-100):
    """Class indices for logits rows ``x``: 20 % ignored, the NaN row (3) counted, a hit
    (row 10, the confident row), the last class (row 11), a masked target (row 2)."""
    n, v = x.shape
    t = rng.integers(0, v, n)
    t[rng.random(n) < 0.2] = ignore_index
    if n > 3:
        t[3] = 0
    if n > 12:
        t[10] = int(np.nanargmax(np.where(np.isnan(x[10]), -np.inf, x[10])))
        t[11] = v - 1
        masked = np.flatnonzero(x[2] == -np.inf)
        if masked.size:
            t[2] = masked[0]
    return t


def class_weights(rng, v):
    """Class weights in [0.1, 3), a tenth of them 0 (masked classes included)."""
    w = rng.uniform(0.1, 3.0, v)
    w[rng.random(v) < 0.1] = 0.0
    return w


def teacher(rng, n, v, k, dtype=np.float64):
    """A dense teacher (float64 log-probabilities) and its top-k classes shuffled within each
    row: ``(dense, indices, their log-probabilities in dtype)``."""
    t = R.log_softmax_rows(make_logits(rng, n, v, np.float64, edges=False))
    top = np.argsort(-t, axis=1)[:, :k]
    top = np.take_along_axis(top, rng.permuted(np.tile(np.arange(k), (n, 1)), axis=1), axis=1)
    return t, top, np.take_along_axis(t, top, axis=1).astype(dtype)


def nearby_kl_pair(v, sigma, dtype, seed):
    """8 row pairs ``z = x + N(0, sigma)`` (KL ~ sigma^2 / 2, where a one-pass KL cancels),
    beside them: equal rows (row 1), a fifth of the classes masked in both (row 2), a row
    offset by 1000 (row 4), and the same fifth, but class 0, masked in x only where z keeps a
    small mass (z = -30, row 5)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype).type
    x = (rng.standard_normal((8, v)) * 2).astype(dt)
    z = (x + rng.standard_normal((8, v)) * sigma).astype(dt)
    z[1] = x[1]
    masked = rng.random(v) < 0.2
    x[2, masked] = z[2, masked] = -np.inf
    z[4] = (x[4] + dt(1000) + rng.standard_normal(v).astype(dt) * sigma).astype(dt)
    one = masked & (np.arange(v) > 0)
    x[5, one] = -np.inf
    z[5, one] = -30.0
    return x, z


def topk_k(v):
    return min(v, {1: 1, 51: 5, 1271: 32}.get(v, 64))


def _lead(a, lead):
    """Rows ``a`` (n, ...) reshaped to ``lead + a.shape[1:]``."""
    return a.reshape(tuple(lead) + a.shape[1:])


#: The cuda backend's launch shapes, as ``name -> (V, knobs of fastdiv._cuda.kernels, launch
#: mode)``, with the knobs of ``SMALL_KNOBS`` in the simulator (multi-warp and multi-block
#: reductions on tiny rows): V = 1 and 51 use the tile kernel (rows staged in shared memory, 32
#: rows per block), "51-small" the register kernel (8 lanes per row), "67-block" one block
#: per row (2 warps), 300 a warp per row.
CUDA_REGIMES = {
    "1": (1, {}, "tile"),
    "51": (51, {}, "tile"),
    "51-small": (51, {"TILE_MAX_V": 0}, "small"),
    "67-block": (67, {"SMALL_MAX_V": 64, "GROUP_MAX_V": 64, "TILE_MAX_V": 0}, "block"),
    "300": (300, {}, "group"),
}
SMALL_KNOBS = dict(SMALL_BLOCK=32, GROUP_BLOCK=64, BLOCK=64, RED_BLOCK=32, RED_CHUNK=64, TILE_ROWS=32)
#: rows of the cuda cells (the edge rows of make_logits need 12)
CUDA_ROWS = 12


def _lock_simulator_shared_arrays():
    """Mend a race of numba-cuda's CUDA simulator (0.30.4) that our tests hit.

    A block's ``cuda.shared.array`` is found by its call site in FakeCUDAShared.array with an
    unlocked check-then-set.  Two simulated threads that reach the call at once can each make
    one, so one of them reduces alone in its own copy.  In fastdiv's device sum / mean
    (_cuda/reductions.py) thread 0 then returned only its own partial.  The symptom was
    ``cross_entropy(backend="cuda", reduction="mean")`` of torch's nll_loss sample #24 giving
    row 0's loss, 0.0622 in place of 2.749.  That happened in 1-3 of 300 calls at a 1e-5 s GIL
    switch interval, and once in CI (2026-12-05) as NaN.  The kernels are not at fault: on a
    GPU every thread of a block sees one shared array.  This replaces the lookup with the same
    one under a lock."""
    import sys
    import threading
    import traceback

    from numba.core import types
    from numba.np import numpy_support
    from numba.cuda.simulator import kernelapi

    cls = kernelapi.FakeCUDAShared
    if getattr(cls, "_fastdiv_locked", False):
        return
    dynamic = cls.array                 # dynamic shared memory (shape 0) and its errors: as is
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:
            return dynamic(self, shape, dtype, alignment)
        site = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[-1][0:2])   # (file, line)
        with lock:
            res = self._allocations.get(site)
            if res is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = self._allocations[site] = np.empty(shape, dtype)
        return res

    cls.array = array
    cls._fastdiv_locked = True


if SIM:
    _lock_simulator_shared_arrays()


def sim_switch_interval():
    """In the simulator, a 0.1 ms GIL switch interval; returns the old one (None: not the
    simulator, nothing changed).  numba's CUDA simulator runs each CUDA thread as a Python
    thread and its block manager polls them in a busy loop holding the GIL: with Python's
    default 5 ms interval every step of a block (each syncthreads) waits for the poller's time
    slice.  The same kernels and launch shapes run, 3-5x faster."""
    if not SIM:
        return None
    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    return old


def small_cuda_blocks(patch, extra=None):
    """In the simulator, patch the cuda launch knobs small: ``SMALL_KNOBS`` plus ``extra`` in
    fastdiv._cuda.kernels, and the block sizes of the divergence, evaluate and softcap
    kernels (``patch``: monkeypatch.setattr in tests, setattr in a subprocess)."""
    if not SIM:
        return
    from fastdiv._cuda import divergences, evaluate, kernels, softcap

    for name, value in {**SMALL_KNOBS, **(extra or {})}.items():
        patch(kernels, name, value)
    patch(divergences, "DIV_BLOCK", 8)
    patch(evaluate, "BLOCK", 4)
    patch(softcap, "BLOCK", 32)


# --------------------------------------------------------------------------- layouts

#: The same values in other memory layouts: every (..., V) float argument of a case is handed
#: over in one of them.  Results must equal the C layout's, bit for bit on the same backend.
LAYOUTS = {
    "C": lambda a: a,
    "strided": lambda a: np.repeat(a, 2, axis=-1)[..., ::2],             # every other column
    "rows-strided": lambda a: np.repeat(a, 3, axis=0)[::3],              # every third row
    "offset": lambda a: np.pad(a, [(0, 0)] * (a.ndim - 1) + [(1, 2)])[..., 1:-2],   # a column window
    "reversed": lambda a: np.flip(np.flip(a).copy()),                   # negative strides
    "Fortran": lambda a: np.asfortranarray(a),
    "read-only": lambda a: _read_only(a),
    "big-endian": lambda a: a.astype(a.dtype.newbyteorder(">")),
}


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------- the table


def _scaled(x, temperature, backend):
    """Logits divided by the temperature as each backend does it: the compiled kernels
    multiply by ``1 / T`` in the compute precision (as torch's ``x / T`` in float32: at
    |x| / T ~ 1e3 that rounding alone moves a confident row's entropy by ~4e-5 relative);
    the numpy backend divides in float64."""
    if temperature == 1.0:
        return x
    if backend == "numpy":
        return np.asarray(x, np.float64) / temperature
    c = compute_dtype(x.dtype)
    return (x.astype(c) * c.type(1.0 / temperature)).astype(np.float64)


@dataclass(frozen=True)
class Case:
    """One row of the table: a public function called on one kind of input with options."""
    id: str
    #: the public function (``fastdiv.<fn>``)
    fn: str
    #: ``make(src, rng, lead, v, dtype)``: a dict of arguments, float arrays of shape lead + (V,)
    make: Callable
    #: ``reference(args, backend)`` on 2-D rows (see ``rows_of``): float64 per row
    reference: Callable
    #: arguments passed positionally, in order (the rest of ``make``'s dict go by keyword)
    positional: tuple
    #: names of the (..., V) float arguments and what each holds: logits, log_probs or probs
    arrays: dict
    #: keyword options of the call
    options: dict = field(default_factory=dict)
    #: "rel" (logsumexp, entropy, cross-entropy) or "kl" (divergences): see assert_rows_close
    tol: str = "rel"
    #: backends implementing it
    backends: tuple = ("numba", "cython", "numpy", "cuda")
    #: keyword giving per-row results ({} for functions that always return per-row values)
    per_row: dict = field(default_factory=lambda: {"reduction": "none"})
    #: ``check(got, args, backend, dtype, case)`` instead of comparing per-row values
    check: Callable | None = None
    #: ``denom(args)``: what reduction="mean" divides by (None: the number of rows)
    denom: Callable | None = None
    #: a row of the bad-input matrix and the guarantees (tests/bad_inputs.py, test_guarantees.py)
    bad_inputs: bool = False
    #: option name -> an invalid value (must raise, naming the option)
    invalid: dict = field(default_factory=dict)
    #: documented per-row result when the named array's rows are all -inf
    all_masked: dict = field(default_factory=dict)
    #: documented per-row result of a row holding +inf in the named logits array
    pos_inf: dict = field(default_factory=dict)
    #: takes ``validate=True`` (checks the arrays given as probabilities / log-probabilities)
    validate: bool = False
    #: float arguments that also take integer class indices (their errors are worded for both)
    indices_too: tuple = ()
    #: a benchmark of benchmarks/test_bench.py: the op's name for fastdiv.bench's peers ("": none)
    bench: str = ""
    #: the function takes ``backend=`` (gaussian_kl, numpy only, does not)
    takes_backend: bool = True
    #: spread of the random logits (soft-capping wants logits beyond its cap)
    scale: float = 3.0
    #: attributes of a ``check`` case's result that every layout (and ``fastdiv.linear`` with
    #: an identity head) must give bit for bit
    same_bits: tuple = ()

    def __str__(self):
        return self.id

    def call(self, args, backend, **kw):
        """The public call on ``args`` (``kw`` overrides the row's options)."""
        pos = [args[k] for k in self.positional]
        rest = {k: a for k, a in args.items() if k not in self.positional}
        if self.takes_backend:
            rest["backend"] = backend
        return getattr(fastdiv, self.fn)(*pos, **rest, **{**self.options, **kw})

    def args(self, rng, lead, v, dtype, *, edges=True, src=None):
        """Arguments of shape ``lead + (V,)`` in ``dtype``: from ``src`` (a Source: its logits
        and its ``rng``) if given, else from ``rng`` (with the edge rows when ``edges``)."""
        src = src or Source(rng, edges, self.scale)
        return self.make(src, src.rng, tuple(lead), v, np.dtype(dtype))

    def good(self, rng, lead, v, dtype):
        """Plain random arguments (no edge rows): what the bad-input matrix starts from."""
        return self.args(rng, lead, v, dtype, edges=False)

    def want(self, args, backend):
        """The reference's per-row float64 values."""
        return self.reference(rows_of(args), backend)


def rows_of(args):
    """Arguments viewed as rows: (..., V) arrays as 2-D, class indices as 1-D (top-k indices
    and log-probabilities as (rows, k)); 1-D weights unchanged."""
    out = {}
    for k, a in args.items():
        if not isinstance(a, np.ndarray) or k == "weight":
            out[k] = a
        elif k == "target" and a.dtype.kind in "iu":
            out[k] = a.reshape(-1)
        else:
            out[k] = a.reshape(-1, a.shape[-1])
    return out


def _distribution(src, kind, x, dt):
    """``_as(kind, x, dt)``, with a negative probability in row 11 among the edge rows (NaN
    for that row on every backend)."""
    a = _as(kind, x, dt)
    if kind == "probs" and getattr(src, "edges", False) and a.shape[0] > 11 and a.shape[1] > 1:
        a[11, 0] = -0.25
    return a


def _one(kind, name="p"):
    def make(src, rng, lead, v, dt):
        n = int(np.prod(lead, dtype=np.int64))
        return {name: _lead(_distribution(src, kind, src.logits(n, v), dt), lead)}
    return make


def _two(kind):
    def make(src, rng, lead, v, dt):
        n = int(np.prod(lead, dtype=np.int64))
        x, z = _pair(src, n, v)
        return {"p": _lead(_distribution(src, kind, x, dt), lead), "q": _lead(_distribution(src, kind, z, dt), lead)}
    return make


def _entropy(kind, temperature=1.0, **extra):
    opts = {"inputs": kind, **({"temperature": temperature} if temperature != 1.0 else {})}
    return Case(
        f"entropy({kind}{_t(temperature)})", "entropy", _one(kind),
        lambda a, b: R.entropy_rows(_scaled(a["p"], temperature, b), kind),
        ("p",), {"p": kind}, opts, **extra)


def _kl(kind, temperature=1.0, **extra):
    opts = {"inputs": kind, **({"temperature": temperature} if temperature != 1.0 else {})}
    return Case(
        f"kl_div({kind}{_t(temperature)})", "kl_div", _two(kind),
        lambda a, b: R.kl_rows(_scaled(a["p"], temperature, b), _scaled(a["q"], temperature, b), kind),
        ("p", "q"), {"p": kind, "q": kind}, opts, tol="kl", **extra)


def _js(kind, beta, temperature=1.0, **extra):
    opts = {"inputs": kind, "beta": beta, **({"temperature": temperature} if temperature != 1.0 else {})}
    return Case(
        f"js_div({kind}, beta={beta}{_t(temperature)})", "js_div",
        _two(kind),
        lambda a, b: R.js_rows(_scaled(a["p"], temperature, b), _scaled(a["q"], temperature, b), beta, kind),
        ("p", "q"), {"p": kind, "q": kind}, opts, tol="kl", **extra)


def _t(temperature):
    return "" if temperature == 1.0 else f", T={temperature}"


def _ce_hard_make(weighted, ignore_index=-100):
    def make(src, rng, lead, v, dt):
        n = int(np.prod(lead, dtype=np.int64))
        x = src.logits(n, v)
        out = {"logits": _lead(x.astype(dt), lead), "target": _lead(targets(rng, x, ignore_index), lead)}
        if weighted:
            out["weight"] = class_weights(rng, v)
        return out
    return make


def _ce_hard(name, *, weighted=False, ignore_index=-100, eps=0.0, softcap=None, **extra):
    opts = {}
    if ignore_index != -100:
        opts["ignore_index"] = ignore_index
    if eps:
        opts["label_smoothing"] = eps
    if softcap is not None:
        opts["softcap"] = softcap

    def ref(a, b):
        x = a["logits"] if softcap is None else R.softcap_rows(a["logits"], softcap)
        w = a.get("weight")
        return R.cross_entropy_hard_rows(x, a["target"], ignore_index,
                                         None if w is None else w.astype(compute_dtype(a["logits"].dtype)), eps)

    def denom(a):
        t = a["target"].reshape(-1)
        counted = t != ignore_index
        w = a.get("weight")
        if w is None:
            return float(np.count_nonzero(counted))
        return float(np.sum(w.astype(compute_dtype(a["logits"].dtype))[t[counted]], dtype=np.float64))

    return Case(name, "cross_entropy", _ce_hard_make(weighted, ignore_index), ref, ("logits", "target"),
                {"logits": "logits"}, opts, denom=denom, **extra)


def _ce_soft(name, *, weighted=False, eps=0.0, temperature=1.0, **extra):
    opts = {}
    if eps:
        opts["label_smoothing"] = eps
    if temperature != 1.0:
        opts["temperature"] = temperature

    def make(src, rng, lead, v, dt):
        n = int(np.prod(lead, dtype=np.int64))
        x, z = _pair(src, n, v)
        out = {"logits": _lead(x.astype(dt), lead), "target": _lead(_as("probs", z, dt), lead)}
        if weighted:
            out["weight"] = class_weights(rng, v)
        return out

    def ref(a, b):
        w = a.get("weight")
        # the weights in the call's compute dtype: float64 if the logits or the target is
        # (the fuzz test draws a float64 target beside float32 logits)
        wide = np.promote_types(compute_dtype(a["logits"].dtype), compute_dtype(a["target"].dtype))
        return R.cross_entropy_soft_rows(_scaled(a["logits"], temperature, b), a["target"],
                                         None if w is None else w.astype(wide), eps)

    return Case(name, "cross_entropy", make, ref, ("logits", "target"), {"logits": "logits", "target": "probs"},
                opts, **extra)


def _topk(tail):
    def make(src, rng, lead, v, dt):
        n = int(np.prod(lead, dtype=np.int64))
        _, top, tk = teacher(rng, n, v, topk_k(v))
        tk = (tk + np.log(0.99)).astype(dt)             # 1 % off the list: 16-bit rounding stays <= 1
        if n > 3:
            tk[3, 0] = np.nan                           # a NaN teacher row
            tk[2] = -np.inf                             # an empty teacher row
        return {"teacher_indices": _lead(top, lead), "teacher_logprobs": _lead(tk, lead),
                "student_logits": _lead(src.logits(n, v).astype(dt), lead)}

    return Case(f"topk_kl_div({tail})", "topk_kl_div", make,
                lambda a, b: R.topk_kl_rows(a["teacher_indices"], a["teacher_logprobs"], a["student_logits"], tail),
                ("teacher_indices", "teacher_logprobs", "student_logits"), {"student_logits": "logits"},
                {"tail": tail}, tol="kl")


# evaluate: per-row fields against fastdiv.reference.evaluate_rows

EVAL_TOPK = (1, 5, 3)


def _eval_make(with_ref):
    def make(src, rng, lead, v, dt):
        n = int(np.prod(lead, dtype=np.int64))
        x, z = _pair(src, n, v)
        out = {"logits": _lead(x.astype(dt), lead), "target": _lead(targets(rng, x), lead)}
        if with_ref:
            out["reference"] = _lead(z.astype(dt), lead)
        return out
    return make


def check_evaluation(res, want, dtype, topk, with_reference):
    """An Evaluation's per-row fields against ``fastdiv.reference.evaluate_rows``' dict."""
    for key in ("nll", "lse", "entropy", "target_prob"):
        assert_rows_close(np.ravel(res[key]), want[key], dtype, key)
    for key in ("argmax", "rank", "counted"):
        np.testing.assert_array_equal(np.ravel(res[key]), want[key], err_msg=key)
    for k in topk:
        np.testing.assert_array_equal(np.ravel(res[f"correct@{k}"]), want[f"correct@{k}"], err_msg=f"correct@{k}")
    if with_reference:
        assert_rows_close(np.ravel(res.kl_ref_model), want["kl_ref_model"], dtype, "kl_ref_model", kind="kl")
        assert_rows_close(np.ravel(res.kl_model_ref), want["kl_model_ref"], dtype, "kl_model_ref", kind="kl")


def _evaluate(with_ref, softcap=None, **extra):
    opts = {"topk": EVAL_TOPK, **({"softcap": softcap} if softcap is not None else {})}

    def check(res, args, backend, dtype, case):
        a = rows_of(args)
        x, t, z = a["logits"], a["target"], a.get("reference")
        if softcap is None:
            want = R.evaluate_rows(x, t, z, topk=EVAL_TOPK)
            check_evaluation(res, want, dtype, EVAL_TOPK, z is not None)
        else:
            # values against the float64 capping; ranks compare capped logits exactly, so
            # against the reference on the logits rounded as the backend rounds them
            want = R.evaluate_rows(R.softcap_rows(x, softcap), t, z, topk=EVAL_TOPK)
            for key in ("nll", "lse", "entropy", "target_prob"):
                assert_rows_close(np.ravel(res[key]), want[key], dtype, key)
            if backend == "cuda":
                rounded = R.softcap_rows(x, softcap).astype(compute_dtype(dtype))
            else:
                rounded = fastdiv.execute.apply_softcap(x, softcap, compute_dtype(dtype))
            exact = R.evaluate_rows(rounded, t, z, topk=EVAL_TOPK)
            for key in ("argmax", "rank", "counted", *(f"correct@{k}" for k in EVAL_TOPK)):
                np.testing.assert_array_equal(np.ravel(res[key]), exact[key], err_msg=key)
            assert np.all(np.abs(np.asarray(res.lse)[np.isfinite(res.lse)]) <= softcap + np.log(x.shape[1]) + 1e-6)
        assert res.nll.dtype == compute_dtype(dtype)

    name = "evaluate(" + ", ".join(["reference"] * with_ref + [f"softcap={softcap}"] * (softcap is not None)) + ")"
    same = ("nll", "lse", "entropy", "target_prob", "rank", "argmax") + ("kl_ref_model", "kl_model_ref") * with_ref
    return Case(name, "evaluate", _eval_make(with_ref), None, ("logits", "target"), {"logits": "logits"}, opts,
                per_row={}, check=check, scale=3.0 if softcap is None else 30.0, same_bits=same, **extra)


def _compare_make(src, rng, lead, v, dt):
    n = int(np.prod(lead, dtype=np.int64))
    x, z = _pair(src, n, v)
    return {"base": _lead(z.astype(dt), lead), "logits": _lead(x.astype(dt), lead),
            "target": _lead(targets(rng, x), lead)}


def _compare():
    """fastdiv.compare's per-row columns against the reference's evaluate_rows and js_rows
    (its definitions, fastdiv/comparison.py), its ranks and argmaxes exactly."""
    def check(res, args, backend, dtype, case):
        a = rows_of(args)
        b, x, t = a["base"], a["logits"], a["target"]
        counted = t != -100
        rb = R.evaluate_rows(b, t)
        rm = R.evaluate_rows(x, t, reference=b)
        has = rb["argmax"] >= 0
        rk = R.evaluate_rows(x, np.where(has, rb["argmax"], -100), topk=EVAL_TOPK)
        with np.errstate(invalid="ignore", over="ignore"):
            top1 = np.where(has, np.exp(np.max(R._f64(b), axis=1) - rb["lse"]), np.nan)
        want = {"kld": rm["kl_ref_model"], "reverse_kld": rm["kl_model_ref"], "js": R.js_rows(b, x, 0.5, "logits"),
                "nll_base": rb["nll"], "nll_model": rm["nll"], "p_base": rb["target_prob"],
                "p_model": rm["target_prob"], "base_top1_prob": top1}
        np.testing.assert_array_equal(res.row, np.flatnonzero(counted))
        for key, w in want.items():
            kind = "kl" if key in ("kld", "reverse_kld", "js") else "rel"
            assert_rows_close(res.columns[key], w[counted], dtype, f"compare {key} [{backend}]", kind=kind)
        np.testing.assert_array_equal(res.same_top1, (has & (rm["argmax"] == rb["argmax"]))[counted])
        for k in EVAL_TOPK:
            if k > 1:
                np.testing.assert_array_equal(res.topk[k], rk[f"correct@{k}"][counted], err_msg=f"top{k}")

    return Case("compare", "compare", _compare_make, None, ("base", "logits", "target"),
                {"base": "logits", "logits": "logits"}, {"topk": EVAL_TOPK}, per_row={}, check=check,
                backends=("numba", "cython", "numpy"),
                same_bits=("kld", "reverse_kld", "js", "nll_base", "nll_model", "same_top1", "base_top1_prob"))


def _gaussian():
    def make(src, rng, lead, v, dt):
        n = int(np.prod(lead, dtype=np.int64))
        mu, lv = rng.standard_normal((n, v)) * 3, rng.standard_normal((n, v)) * 2
        mu0, lv0 = rng.standard_normal((n, v)), lv + rng.choice([1e-12, -3e-8, 0.4, -2.0, 5.0], size=(n, v))
        return {k: _lead(a.astype(dt), lead) for k, a in (("mu", mu), ("logvar", lv), ("mu_prior", mu0),
                                                          ("logvar_prior", lv0))}

    return Case("gaussian_kl", "gaussian_kl", make,
                lambda a, b: R.gaussian_kl_elements(a["mu"], a["logvar"], a["mu_prior"], a["logvar_prior"]).sum(-1),
                ("mu", "logvar", "mu_prior", "logvar_prior"),
                {"mu": "values", "logvar": "values", "mu_prior": "values", "logvar_prior": "values"},
                backends=("numpy",), tol="kl", takes_backend=False)


# The bad-input rows: how each option's invalid value is refused is in tests/bad_inputs.py.
_BAD_ENTROPY = dict(bad_inputs=True, validate=True, invalid={"inputs": "logit", "reduction": "avg"})
_BAD_KL = dict(bad_inputs=True, validate=True, invalid={"inputs": "prob", "reduction": "batchmean"})
_BAD_JS = dict(bad_inputs=True, validate=True,
               invalid={"inputs": "prob", "reduction": "batchmean", "beta": 1.5, "temperature": 0.0})

CASES = [
    Case("logsumexp", "logsumexp", _one("logits", "x"), lambda a, b: R.logsumexp_rows(a["x"]), ("x",),
         {"x": "logits"}, per_row={}, bad_inputs=True, all_masked={"x": -np.inf}, pos_inf={"x": np.inf},
         bench="logsumexp"),
    _entropy("logits", **_BAD_ENTROPY, all_masked={"p": 0.0}, pos_inf={"p": np.nan}, bench="entropy"),
    _entropy("log_probs", **_BAD_ENTROPY, all_masked={"p": 0.0}),
    _entropy("probs", **_BAD_ENTROPY),
    _entropy("logits", temperature=7.3),
    _kl("logits", **_BAD_KL, all_masked={"p": 0.0, "q": np.inf}, pos_inf={"p": np.nan, "q": np.nan}, bench="kl_div"),
    _kl("log_probs", **_BAD_KL, all_masked={"p": 0.0, "q": np.inf}),
    _kl("probs", **_BAD_KL),
    _kl("logits", temperature=0.5),
    _js("logits", 0.3, **_BAD_JS, pos_inf={"p": np.nan, "q": np.nan}),
    _js("logits", 0.5, bench="js_div"),
    _js("log_probs", 0.9),
    _js("probs", 0.3, **_BAD_JS),
    _js("probs", 0.1),
    _js("logits", 0.3, temperature=2.0),
    _js("logits", 0.0),                                 # the limits: forward and reverse KL
    _js("probs", 1.0),
    _ce_hard("cross_entropy(indices)", bad_inputs=True, bench="cross_entropy", all_masked={"logits": np.inf},
             pos_inf={"logits": np.nan},
             invalid={"reduction": "batchmean", "label_smoothing": 1.5, "ignore_index": 0.5}),
    _ce_hard("cross_entropy(indices, weight, label_smoothing=0.1, ignore_index=7)", weighted=True,
             ignore_index=7, eps=0.1),
    _ce_hard("cross_entropy(indices, label_smoothing=1.0)", eps=1.0),
    _ce_hard("cross_entropy(indices, softcap=15.0)", softcap=15.0, scale=30.0),
    _ce_hard("cross_entropy(indices, softcap=15.0, label_smoothing=0.1)", softcap=15.0, eps=0.1, scale=30.0,
             backends=("numba", "cython", "numpy")),
    _ce_soft("cross_entropy(probs)", bad_inputs=True, validate=True, indices_too=("target",),
             all_masked={"logits": np.inf}, pos_inf={"logits": np.nan},
             invalid={"reduction": "avg", "label_smoothing": -0.5}),
    _ce_soft("cross_entropy(probs, weight, label_smoothing=0.2)", weighted=True, eps=0.2),
    _ce_soft("cross_entropy(probs, label_smoothing=0.1, T=0.5)", eps=0.1, temperature=0.5),
    _topk("renormalize"),
    _topk("bucket"),
    _evaluate(False, bench="evaluate"),
    _evaluate(True),
    _evaluate(False, softcap=12.0),
    _compare(),
    _gaussian(),
]

BY_ID = {c.id: c for c in CASES}
assert len(BY_ID) == len(CASES), "case ids must be unique"

#: The rows of the bad-input matrix and of the guarantees: one per public function and input kind.
FUNCTIONS = [c for c in CASES if c.bad_inputs]


# --------------------------------------------------------------------------- tiers


def fast(backend, dtype=np.float32, v=None, layout="C", *, regime=0, turn=0):
    """Whether a cell of the matrix belongs to README's test command (the fast tier) rather
    than to the ``slow`` tier that CI runs after it (``pytest -m slow``).

    * numba compiles one specialization per kernel and input dtype, at 1 to 15 CPU seconds
      each: the fast tier compiles float32 only.  The numpy backend (the reference behind the
      API) also runs float32 there.  Cython, compiled at install, runs every dtype.
    * Big inputs (V = 128256): float32, compiled backends.  Layouts: the non-contiguous
      ("strided") and read-only ones, float32 (the others convert alike: slow tier).
    * The CUDA simulator costs ~5 s a cell whatever its size: each case once, in float32, on
      one launch shape (``regime``), the shapes taken in turn (``turn``: the case's position);
      the slow tier samples more (``cuda_sim_cell``).  On a GPU every cell is fast.
    """
    dtype = np.dtype(dtype)
    if backend == "cuda":
        return cuda_sim_cell(dtype, regime, turn) == "fast"
    if v is not None and v > 100_000:
        return dtype == np.float32 and backend != "numpy"
    if layout != "C":
        return layout in FAST_LAYOUTS and dtype == np.float32 and backend != "numpy"
    if backend in ("numba", "numpy"):
        return dtype == np.float32
    return True


FAST_LAYOUTS = ("strided", "read-only")


def cuda_sim_cell(dtype, regime, turn, regimes=None):
    """The tier of a cuda cell (``"fast"``, ``"slow"``) or None where the simulator skips it.

    On a GPU every cell is fast.  The simulator costs ~5 s a cell (its threads, not the
    elements), too much for all 4 dtypes x 5 launch shapes of every case (580 cells, 48 min on
    2 cores): case ``turn`` runs float32 on launch shape ``turn`` (fast) and on the next one
    (slow), and one other dtype (float64, float16, bfloat16 by turns) on the shape after that
    (slow).  So every case meets 3 of the 5 launch shapes, 2 in float32, and one of the other
    dtypes' loaders; every (dtype, shape) pair is met by at least one case."""
    if not SIM:
        return "fast"
    n = len(CUDA_REGIMES) if regimes is None else regimes
    dtype = np.dtype(dtype)
    step = (regime - turn) % n
    if dtype == np.float32:
        return "fast" if step == 0 else "slow" if step == 1 else None
    others = [d for d in DTYPES if d != np.float32]
    return "slow" if step == 2 and dtype == others[turn % len(others)] else None
