"""The Cython kernels at every ISA level this CPU runs (issue 21).

The extension holds the kernels compiled for several instruction-set levels (on x86-64:
x86-64, x86-64-v2, x86-64-v3 = AVX2 + FMA, x86-64-v4 = AVX-512) and runs the highest the CPU
supports; ``FASTDIV_ISA=<level>`` (read at import) caps it.  Each level's code has its own
vector width, block size and intrinsics (masked AVX-512 loads, F16C / AVX2 half loads, generic
vector code), so each is checked on its own: one subprocess per level runs the rows of the case
table (tests/cases.py: logsumexp, entropy, cross-entropy, KL, JS, top-k KL, evaluate, with
masked -inf, NaN, +inf and extreme rows) on the cython backend, for float32, float64 and the
half formats, V = 1, 51, 1271, against the float64 reference with the table's tolerances, and
checks that its OpenMP regions give the same bits on one and two threads.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

K = pytest.importorskip("fastdiv._cython._kernels", reason="the Cython extension is not built")

HERE = os.path.dirname(os.path.abspath(__file__))
V_SHAPES = (1, 51, 1271)


def _run_level(level, seed):
    """The child: every cython case of the table at this level; prints the level and a count."""
    import warnings

    import cases as C
    from test_cases import run, verify

    from fastdiv._cython import _kernels

    assert _kernels.ISA_LEVEL == level, (_kernels.ISA_LEVEL, level)
    rng = np.random.default_rng(seed)
    dtypes = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)]
    dtypes += [C.BFLOAT16] if C.BFLOAT16 is not None else []
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # NaN / inf rows
        for case in C.CASES:
            if "cython" not in case.backends:
                continue
            for dtype in dtypes:
                for v in V_SHAPES:
                    args = case.args(rng, (C.rows_for(v),), v, dtype)
                    try:
                        verify(case, run(case, args, "cython"), args, "cython", dtype)
                    except AssertionError as exc:
                        raise AssertionError(f"{level}: {case.id} {dtype} V={v}: {exc}") from None
                    n += 1
    # OpenMP in this level's code: the prange loops of _kernels.pyx and the divergence driver's
    # parallel region (half inputs, JS) give the same bits on 1 and 2 threads.
    x = C.make_logits(rng, 40, 1271, np.float32)
    z = C.make_logits(rng, 40, 1271, np.float32)
    calls = [lambda o, t: _kernels.lse(x, o, t),
             lambda o, t: _kernels.kl_logits(x, z, 1.0, o, t),
             lambda o, t: _kernels.lse(x.astype(np.float16).view(np.uint16), o, t),
             lambda o, t: _kernels.js_logits(x, z, 0.3, 1.0, o, t)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for f in calls:
            one, two = np.empty(40, np.float32), np.empty(40, np.float32)
            f(one, 1)
            f(two, 2)
            np.testing.assert_array_equal(one, two)
    print(level, n)


def _child(level):
    """Run _run_level in a subprocess with FASTDIV_ISA=level."""
    # one thread for the table (a loaded 2-core machine makes every parallel region slow)
    env = {**os.environ, "FASTDIV_ISA": level, "FASTDIV_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, os.path.abspath(__file__), level, str(_seed())],
                          capture_output=True, text=True, env=env, cwd=HERE, timeout=300)


def _seed():
    return int(os.environ.get("FASTDIV_TEST_SEED", "0") or 0) or 20260921


def _levels():
    """Every level this CPU runs.  The one running in this process (``K.ISA_LEVEL``) is in the
    slow tier: README's command already runs the whole case table, every dtype, on it
    (tests/test_cases.py, Cython cells) and its OpenMP bits (tests/test_contract.py)."""
    for level in K.ISA_SUPPORTED:
        yield pytest.param(level, marks=[pytest.mark.slow] if level == K.ISA_LEVEL else [], id=level)


@pytest.mark.parametrize("level", list(_levels()))
def test_level_matches_reference(level):
    res = _child(level)
    assert res.returncode == 0, f"FASTDIV_ISA={level} (seed {_seed()}):\n{res.stdout}\n{res.stderr[-4000:]}"
    got_level, count = res.stdout.split()[-2:]
    assert got_level == level and int(count) > 100


def _import_with(level):
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from fastdiv._cython import _kernels as K; print(K.ISA_LEVEL)")
    env = {**os.environ, "FASTDIV_ISA": level}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, cwd=HERE)   # not the repository root: the installed fastdiv


def test_unknown_level_is_an_error():
    res = _import_with("x86-64-v9")
    assert res.returncode != 0
    assert "FASTDIV_ISA='x86-64-v9' is not an ISA level" in res.stderr
    assert K.ISA_LEVELS[0] in res.stderr                 # the message lists the valid levels


@pytest.mark.skipif(K.ISA_SUPPORTED == K.ISA_LEVELS, reason="this CPU runs every level of the build")
def test_unsupported_level_runs_the_highest_supported():
    res = _import_with(K.ISA_LEVELS[-1])
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == K.ISA_SUPPORTED[-1]
    assert "FASTDIV_ISA" in res.stderr and "does not support" in res.stderr


def test_show_config_names_the_level(capsys):
    import fastdiv

    fastdiv.show_config()
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "cython:" in ln)
    assert f"running {K.ISA_LEVEL} " in line if K.DISPATCH else f"one level, {K.ISA_LEVEL} " in line
    # "ISA dispatch: running ..." with dispatch, "no ISA dispatch: one level ..." without
    assert ("no ISA dispatch" not in line and "ISA dispatch" in line) == K.DISPATCH


if __name__ == "__main__":
    _run_level(sys.argv[1], int(sys.argv[2]))
