"""The regression gate's verdict logic and options (benchmarks/gate.py), on made-up figures; one
smoke run of its fresh-process measurement."""
from __future__ import annotations

import argparse
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gate  # noqa: E402

CPU = {"key": "CPU A", "vendor": "A"}
KERNELS = [f"{b}/{op}/V50257/float32/1t" for b in ("numba", "cython") for op in ("logsumexp", "entropy", "kl_div")]


def figures(scale=None):
    scale = scale or {}
    return {k: {"kernel_over_probe": 3.0 * scale.get(k, 1.0), "ns_per_element": 0.3} for k in KERNELS}


def machines(key="CPU A", value=3.0):
    return {key: {"recorded": {"date": "2026-12-05", "commit": "0" * 40},
                  "figures": {k: {"kernel_over_probe": value} for k in KERNELS}}}


def test_own_baseline_passes_noise_and_fails_a_slower_kernel():
    assert gate.compare(figures({KERNELS[0]: 1.2}), machines(), CPU, 1.35, 1.6) == []
    failures = gate.compare(figures({KERNELS[2]: 2.0}), machines(), CPU, 1.35, 1.6)
    assert len(failures) == 1 and failures[0].startswith(KERNELS[2])


def test_unknown_cpu_divides_out_its_speed_but_not_one_kernel_slowing():
    other = {**machines("CPU B", 2.0), **machines("CPU C", 2.5)}      # loosest: 2.5
    # a CPU uniformly 1.8x slower than the loosest known one passes ...
    assert gate.compare(figures({k: 1.5 for k in KERNELS}), other, CPU, 1.35, 1.6) == []
    # ... and a 2x slowdown of one kernel on it fails, naming that kernel only
    slow = {k: 1.5 for k in KERNELS}
    slow[KERNELS[4]] = 3.0
    failures = gate.compare(figures(slow), other, CPU, 1.35, 1.6)
    assert len(failures) == 1 and failures[0].startswith(KERNELS[4])


def test_a_failure_must_hold_when_measured_again():
    """confirm: a figure that fails is measured again; it stays a failure only if every
    measurement fails (the fastest is kept), and only the failing keys are measured again."""
    asked = []

    def remeasure(keys, scale):
        asked.append(sorted(keys))
        return {k: {"kernel_over_probe": 3.0 * scale, "ns_per_element": 0.3} for k in keys}

    def check(figs, keys):
        return gate.compare(figs, machines(), CPU, 1.35, 1.6, keys)

    figs = figures({KERNELS[1]: 1.5})
    failures = gate.compare(figs, machines(), CPU, 1.35, 1.6)
    assert gate.confirm(failures, figs, lambda k: remeasure(k, 1.0), check, 2) == []    # interference
    assert asked == [[KERNELS[1]]] and figs[KERNELS[1]]["kernel_over_probe"] == 3.0
    figs = figures({KERNELS[1]: 1.5})
    assert len(gate.confirm(failures, figs, lambda k: remeasure(k, 1.6), check, 2)) == 1  # slower each time
    assert len(asked) == 3


def test_update_rewrites_only_this_cpus_entry(tmp_path):
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"format": 2, "machines": machines("CPU B", 2.0)}))
    gate.update(str(path), figures(), {"key": "CPU A", "vendor": "A"}, ["--update"])
    saved = gate.load(str(path))
    assert set(saved) == {"CPU A", "CPU B"}
    assert saved["CPU B"]["figures"][KERNELS[0]]["kernel_over_probe"] == 2.0
    assert saved["CPU A"]["figures"][KERNELS[0]]["kernel_over_probe"] == 3.0
    assert saved["CPU A"]["cpu"] == {"vendor": "A"} and saved["CPU A"]["recorded"]["command"].endswith("--update")


def test_the_committed_baseline_describes_its_cpus():
    for key, entry in gate.load(gate.BASELINE).items():
        assert {"vendor", "model_name", "isa", "L2_per_core", "L3"} <= set(entry["cpu"]), key
        assert {"date", "commit", "command"} <= set(entry["recorded"]), key


def test_measure_names_a_kernel_it_does_not_know(tmp_path, capsys):
    """--measure (the fresh process of ``confirm``) refuses a key no run of these cases has,
    naming it, and needs --json to hand its figures back."""
    with pytest.raises(SystemExit) as e:
        gate.main(["--short", "--measure", "numba/entropy/V50257/float64/2t"])
    assert e.value.code == 2 and "--measure needs --json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        gate.main(["--short", "--measure", "numba/no_such_op/V50257/float64/1t", "--json", str(tmp_path / "f.json")])
    assert e.value.code == 2 and "no_such_op" in capsys.readouterr().err


def test_measure_fresh_brings_back_the_figures_of_another_process():
    """The confirming tries' path end to end (one batch, no judgement): ``gate.py --measure``
    in a child process, its figures read back."""
    key = "cython/logsumexp/C51/float32/1t"
    if "cython" not in gate._bench.available_backends():
        pytest.skip("the Cython extension is not built")
    figures = gate.measure_fresh({key}, argparse.Namespace(short=True, repeat=1, slowdown=1, slowdown_only=None))
    assert set(figures) == {key} and figures[key]["kernel_over_probe"] > 0
