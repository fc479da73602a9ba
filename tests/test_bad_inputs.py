"""The bad-input matrix (cases in tests/bad_inputs.py) on every backend, each backend's cases
in one subprocess: a crash is a failure of the case that was running, not of the test run.

The subprocesses of all backends run at once when the first case runs, each over the cases
this session selected (the fast tier, or ``-m slow``: tests/cases.py, ``fast``); a backend
whose process dies is restarted after the case that killed it, so one crash hides nothing."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

import cases
from bad_inputs import all_cases
from conftest import ALL_HOST
from fastdiv import _registry

HERE = pathlib.Path(__file__).resolve().parent
CASES = all_cases()
BACKENDS = ALL_HOST + (["cuda"] if _registry.unavailable_reason("cuda") is None else [])


def _env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def _start(backend, ids, env):
    return subprocess.Popen([sys.executable, str(HERE / "bad_inputs.py"), backend, *ids], cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _collect(proc, results):
    """Read one subprocess's JSON lines into ``results``; the case it died in, if it died."""
    out, err = proc.communicate(timeout=600)
    running = None
    for line in out.splitlines():
        msg = json.loads(line)
        if "start" in msg:
            running = msg["start"]
        else:
            results[msg["id"]] = (msg["ok"], msg["msg"])
            running = None
    if proc.returncode == 0:
        return None
    how = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
           else f"exit status {proc.returncode}")
    crashed = running or "(before the first case)"
    results[crashed] = (False, f"the process crashed ({how}) while running this case\n{err[-2000:]}")
    return crashed


def run_matrix(backends, ids, extra_env=None):
    """{backend: {case id: (ok, message)}} with every backend's cases in subprocesses (``ids``:
    a list for every backend, or a dict of lists per backend)."""
    env = _env(extra_env)
    results = {b: {} for b in backends}
    todo = {b: list(ids[b] if isinstance(ids, dict) else ids) for b in backends}
    while any(todo.values()):
        procs = {b: _start(b, todo[b], env) for b in backends if todo[b]}
        for b, proc in procs.items():
            crashed = _collect(proc, results[b])
            if crashed is None or crashed not in todo[b]:
                todo[b] = [i for i in todo[b] if i not in results[b]] if crashed is None else []
                continue
            todo[b] = todo[b][todo[b].index(crashed) + 1:]          # go on after the crash
    return results


_RESULTS = {}


def _results(backend, session):
    """The results of the cases this session runs (the tier selected: ``-m``, ``-k``), every
    backend's subprocess started at once at the first of them."""
    if not _RESULTS:
        wanted = {}
        for item in session.items:
            if getattr(item, "originalname", None) == "test_bad_input" and item.module.__name__ == __name__:
                params = item.callspec.params
                wanted.setdefault(params["backend"], []).append(params["case_id"])
        _RESULTS.update(run_matrix(list(wanted), wanted))
    return _RESULTS.get(backend, {})


def _params():
    """Every case on every backend.  In numba's CUDA simulator a case that runs a kernel costs
    0.1-2.6 s (one that raises, ~0): those take turns, one in ``SIM_TURNS`` in the fast tier."""
    for backend in BACKENDS:
        for k, case in enumerate(CASES):
            runs = case.expected(backend)[0] == "returns"
            fast = cases.fast(backend, case.dtype, regime=0, turn=k % SIM_TURNS if runs else 0)
            yield pytest.param(backend, case.id, marks=[] if fast else [pytest.mark.slow], id=f"{case.id}-{backend}")


SIM_TURNS = 4


def test_matrix_size():
    assert len(CASES) >= 40


@pytest.mark.parametrize("backend,case_id", list(_params()))
def test_bad_input(backend, case_id, request):
    ok, msg = _results(backend, request.session).get(case_id, (False, "no result: the subprocess never reached this case"))
    assert ok, f"[{backend}] {case_id}: {msg}"


def test_a_crash_is_a_failure_naming_the_case():
    ids = [c.id for c in CASES[:3]]
    res = run_matrix(["numpy"], ids, {"FASTDIV_SELFTEST_CRASH_AT": ids[1]})["numpy"]
    assert res[ids[0]][0] and res[ids[2]][0]                     # the cases around it still ran
    assert not res[ids[1]][0] and "crashed (killed by SIGABRT)" in res[ids[1]][1]
