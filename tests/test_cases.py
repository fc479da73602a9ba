"""Every row of the case table (tests/cases.py) on every backend that implements it, against
the float64 reference: fresh random inputs with masked, NaN, +inf, extreme, confident and
nearly equal rows, for V = 1, 51, 1271 and 128256, and in every layout (non-contiguous,
read-only, Fortran, big-endian: the same bits as C order).

The cuda backend runs the same rows in numba's CUDA simulator without a GPU, on the launch
shapes of ``cases.CUDA_REGIMES`` (its block sizes patched small, so that multi-warp and
multi-block reductions run on tiny rows).

Which cells README's test command runs and which the ``slow`` tier runs: ``cases.fast``.
"""
from __future__ import annotations

import numpy as np
import pytest

import cases as C

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _id(dtype):
    return np.dtype(dtype).name


def _params():
    for case in C.CASES:
        for backend in case.backends:
            if backend not in C.ALL_HOST:
                continue
            for dtype in C.DTYPES:
                cells = [(v, "C") for v in C.V_SHAPES]
                cells += [(1271, layout) for layout in C.LAYOUTS if layout != "C"
                          and not (layout == "big-endian" and dtype == C.BFLOAT16)]
                for v, layout in cells:
                    marks = [] if C.fast(backend, dtype, v, layout) else [pytest.mark.slow]
                    yield pytest.param(case, backend, dtype, v, layout, marks=marks,
                                       id=f"{case.id}-{backend}-{_id(dtype)}-V{v}-{layout}")


def run(case, args, backend):
    """The case's call, its per-row results (or the result object of a ``check`` case)."""
    return case.call(args, backend, **case.per_row)


def verify(case, got, args, backend, dtype):
    """``got`` against the reference (or the case's own check)."""
    if case.check is not None:
        case.check(got, args, backend, dtype, case)
        return
    got = np.asarray(got)
    lead = next(iter(args[k] for k in case.arrays)).shape[:-1]
    assert got.shape == lead, (case.id, got.shape, lead)
    assert got.dtype == C.compute_dtype(dtype), (case.id, got.dtype)
    C.assert_rows_close(got.reshape(-1), case.want(args, backend), dtype, f"{case.id} [{backend}]", kind=case.tol)


@pytest.mark.parametrize("case,backend,dtype,v,layout", list(_params()))
def test_case(case, backend, dtype, v, layout, rng):
    args = case.args(rng, (C.rows_for(v),), v, dtype)
    if layout == "C":
        verify(case, run(case, args, backend), args, backend, dtype)
        return
    moved = {k: (C.LAYOUTS[layout](a) if k in case.arrays else a) for k, a in args.items()}
    got = run(case, moved, backend)
    verify(case, got, args, backend, dtype)
    want = run(case, args, backend)                   # the C layout: the same bits
    if case.check is None:
        np.testing.assert_array_equal(got, want, err_msg=f"{case.id} {layout} vs C")
    else:
        for key in case.same_bits:
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=f"{case.id} {layout} vs C: {key}")


# --------------------------------------------------------------------------- cuda (simulator)

def _cuda_params():
    """Every case x dtype x launch shape on a GPU; in the simulator the cells of
    ``cases.cuda_sim_cell``."""
    regimes = list(C.CUDA_REGIMES)
    turn = 0
    for case in C.CASES:
        if "cuda" not in case.backends:
            continue
        for dtype in C.DTYPES:
            for i, regime in enumerate(regimes):
                tier = C.cuda_sim_cell(dtype, i, turn)
                if tier is not None:
                    yield pytest.param(case, dtype, regime, marks=[] if tier == "fast" else [pytest.mark.slow],
                                       id=f"{case.id}-{_id(dtype)}-{regime}")
        turn += 1


@pytest.fixture
def cuda_knobs(monkeypatch):
    """Patch the cuda launch knobs small (in the simulator) plus ``extra``; returns the module."""
    from fastdiv._cuda import kernels as K

    def apply(extra):
        C.small_cuda_blocks(monkeypatch.setattr, extra)
        return K
    return apply


@pytest.mark.cuda
@pytest.mark.skipif(not C.CUDA, reason=str(C._registry.unavailable_reason("cuda")))
@pytest.mark.parametrize("case,dtype,regime", list(_cuda_params()))
def test_case_cuda(case, dtype, regime, rng, cuda_knobs):
    v, extra, mode = C.CUDA_REGIMES[regime]
    K = cuda_knobs(extra)
    if C.SIM:
        assert K.launch_plan(C.CUDA_ROWS, v)[0] == mode
    args = case.args(rng, (C.CUDA_ROWS,), v, dtype)
    verify(case, run(case, args, "cuda"), args, "cuda", dtype)
