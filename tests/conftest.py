"""Test session setup: the CUDA simulator without a GPU (small launch knobs for every test, a
short GIL switch interval), hypothesis profiles, the per-test
random generator (its seed printed, so a failure can be replayed with FASTDIV_TEST_SEED=<seed>)
and backend parameters.  The case table, input generators and tolerances: tests/cases.py.
"""
from __future__ import annotations

import glob
import os
import secrets
import sys

# Without an NVIDIA GPU, run the cuda backend's tests in numba's CUDA simulator (this must
# be decided before numba.cuda is first imported).  Set NUMBA_ENABLE_CUDASIM=0 to opt out.
if not glob.glob("/dev/nvidia[0-9]*"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    if "numba" in sys.modules:                 # a plugin imported numba first: re-read the variable
        import numba.core.config

        numba.core.config.reload_config()

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import fastdiv
from fastdiv import _registry

# Hypothesis profiles: "default" keeps CI fast; "thorough" is the documented long fuzz run
# (HYPOTHESIS_PROFILE=thorough pytest tests/test_fuzz.py --hypothesis-show-statistics).
settings.register_profile("default", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The table's vocabulary of inputs, tolerances and backends lives in tests/cases.py; these names
# are re-exported for the tests that import them from here.
import cases  # noqa: E402
from cases import (  # noqa: E402,F401
    ALL_HOST, COMPILED, TOL, V_SHAPES, assert_rows_close, make_logits, make_probs, rows_for,
)


def backend_params(backends=None, dtype=np.float32):
    """pytest params for backends, with unavailable ones skipped (the reason shown) and the
    cells of a test on ``dtype`` inputs outside the fast tier marked slow (cases.fast)."""
    out = []
    for b in backends or ("numba", "cython"):
        why = _registry.unavailable_reason(b)
        marks = [pytest.mark.skipif(why is not None, reason=str(why))]
        if not cases.fast(b, dtype):
            marks.append(pytest.mark.slow)
        out.append(pytest.param(b, marks=marks, id=b))
    return out


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The tier rule (cases.fast) for every test parametrized by ``backend`` and ``dtype``:
    a cell outside the fast tier gets the slow marker (before ``-m`` deselects).

    And the case table's tests first: they compile each numba kernel the session needs, once,
    in this process; the subprocesses started later (the bad-input matrix, the memory probe)
    then load them from numba's cache instead of compiling them again."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        backend, dtype = params.get("backend"), params.get("dtype")
        if isinstance(backend, str) and dtype is not None and not cases.fast(backend, dtype):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.path.name != "test_cases.py")        # stable: file order otherwise


@pytest.fixture(autouse=True, scope="session")
def _fast_simulator():
    """The CUDA simulator's short GIL switch interval (cases.sim_switch_interval) for the whole
    session: the 29 fast-tier cells of test_case_cuda took 64 s at Python's default 5 ms and
    13-21 s at 0.1 ms on 2 loaded cores.  Under it one CI run (2026-12-05) got a wrong device
    sum from a simulated nll_loss sample: a race in the simulator's shared arrays, mended in
    tests/cases.py (_lock_simulator_shared_arrays; 1 % of such sums at a 1e-5 s interval
    before, 0 in 1000 after)."""
    old = cases.sim_switch_interval()
    yield
    if old is not None:
        sys.setswitchinterval(old)


@pytest.fixture(autouse=True)
def _small_cuda_launches(monkeypatch):
    """In the simulator every test runs the cuda kernels with the small launch knobs of
    cases.small_cuda_blocks (tests may set their own on top), as the case table, the launch-path
    tests, the peers and the bad-input matrix always did: the multi-warp and multi-block
    reductions then run on tiny shapes, and a block is tens of the simulator's Python threads,
    not 128-256 (tests/test_evaluate_cuda.py: ~3x faster).  On a GPU nothing is patched."""
    if cases.SIM and cases.CUDA:
        cases.small_cuda_blocks(monkeypatch.setattr)


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("FASTDIV_TEST_SEED", secrets.randbits(32)))
    print(f"{request.node.nodeid}: FASTDIV_TEST_SEED={seed}")
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _restore_threads():
    n = fastdiv.get_num_threads()
    yield
    fastdiv.set_num_threads(n)
