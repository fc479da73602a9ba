"""``fastdiv compare``: the report equals fastdiv.compare, files in chunks, gates and exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import fastdiv
from fastdiv import _compare_cli, cli


def _data(tmp_path, rows=300, v=120, seed=0):
    rng = np.random.default_rng(seed)
    b = (rng.standard_normal((rows, v)) * rng.uniform(0.5, 6, (rows, 1))).astype(np.float32)
    m = (b + 0.4 * rng.standard_normal((rows, v))).astype(np.float32)
    t = rng.integers(0, v, rows)
    t[::7] = -100
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "m.npy", m)
    np.save(tmp_path / "t.npy", t)
    return b, m, t


def _run(tmp_path, *extra, targets=True):
    argv = ["compare", "--base", str(tmp_path / "b.npy"), "--logits", str(tmp_path / "m.npy")]
    if targets:
        argv += ["--targets", str(tmp_path / "t.npy")]
    return cli.main(argv + list(extra))


@pytest.mark.parametrize("backend", ["numba", "cython", "numpy"])
def test_json_equals_compare_in_memory_across_chunk_sizes(tmp_path, capsys, backend):
    if backend not in fastdiv.available_backends():
        pytest.skip(f"{backend} unavailable")
    b, m, t = _data(tmp_path)
    want = _compare_cli.json_safe(fastdiv.compare(b, m, t, backend=backend).to_dict())
    for chunk_mb in ("0.05", "64"):                       # 0.05 MB: 52 rows per chunk
        out = tmp_path / f"o{chunk_mb}.json"
        assert _run(tmp_path, "--json", str(out), "--chunk-mb", chunk_mb, "--backend", backend) == 0
        assert json.loads(out.read_text()) == want
    text = capsys.readouterr().out
    for line in ("Mean    KLD:", "Mean PPL(Q)/PPL(base)", "Same top p:", "RMS Δp", "99.9%   KLD:", "Base top-1 in top 5"):
        assert line in text
    assert f"{want['kld']['mean']:10.6f} ± {want['kld']['se']:10.6f}" in text


def test_without_targets_markdown_and_worst_rows(tmp_path, capsys):
    b, m, _ = _data(tmp_path, seed=1)
    md, js = tmp_path / "s.md", tmp_path / "o.json"
    assert _run(tmp_path, "--markdown", str(md), "--json", str(js), "--worst", "4", "--topk", "1", "3",
                targets=False) == 0
    out = capsys.readouterr().out
    d = json.loads(js.read_text())
    assert d["ppl"] is None and d["delta_p"] is None and list(d["topk_agreement"]) == ["3"]
    assert "Perplexity statistics" not in out and "rows with the largest KLD" in out
    res = fastdiv.compare(b, m)
    top = sorted(range(len(b)), key=lambda i: -res.kld[i])[:4]
    table = out.split("rows with the largest KLD")[1]
    assert [int(line.split()[0]) for line in table.strip().splitlines()[2:]] == top
    text = md.read_text()
    assert text.startswith("### fastdiv compare") and "| mean KLD(base ‖ model) |" in text and f"| {top[0]} |" in text


def test_gates_exit_3_and_name_every_failed_condition(tmp_path, capsys):
    _data(tmp_path)
    d = fastdiv.compare(*(np.load(tmp_path / f) for f in ("b.npy", "m.npy", "t.npy"))).to_dict()
    kld, q999 = d["kld"]["mean"], d["kld"]["quantiles"]["99.9"]
    assert _run(tmp_path, "--fail-if", f"kld.mean > {kld * 2}", "--fail-if", "ppl.ratio<=0") == 0
    assert "2 gate(s) passed" in capsys.readouterr().err
    md = tmp_path / "s.md"
    code = _run(tmp_path, "--fail-if", f"kld.mean > {kld / 2}", "--fail-if", f"kld.quantiles.99.9 >= {q999}",
                "--fail-if", "topk_agreement.5 < 2", "--fail-if", "kld_by_confidence.0 > 1e9", "--markdown", str(md))
    assert code == 3
    err = capsys.readouterr().err.splitlines()
    assert err == [f"fastdiv compare: gate failed: kld.mean > {kld / 2} (value {kld:.6g})",
                   f"fastdiv compare: gate failed: kld.quantiles.99.9 >= {q999} (value {q999:.6g})",
                   f"fastdiv compare: gate failed: topk_agreement.5 < 2 (value {d['topk_agreement']['5']:.6g})"]
    assert "**Gates:** `kld.mean" in md.read_text()


def test_a_nan_value_fails_its_gate(tmp_path, capsys):
    b, m, t = _data(tmp_path)
    m[5, 2] = np.nan
    t[5] = 1
    np.save(tmp_path / "m.npy", m)
    np.save(tmp_path / "t.npy", t)
    js = tmp_path / "o.json"
    assert _run(tmp_path, "--fail-if", "kld.mean > 1e9", "--fail-if", "same_top1.mean > 2", "--json", str(js)) == 3
    err = capsys.readouterr().err
    assert "gate failed: kld.mean > 1e9 (value nan)" in err and "same_top1" not in err
    assert json.loads(js.read_text())["kld"]["mean"] is None            # strict JSON: NaN as null


@pytest.mark.parametrize("expr, why", [
    ("kld.mean >> 1", "expected PATH OP NUMBER"),
    ("kld.mean > x", "expected PATH OP NUMBER"),
    ("kld.median > 1", "no 'kld.median' in the report"),
    ("kld > 1", "not a number"),
    ("ppl.ratio > 1.01", "null without --targets"),
    ("kld_by_confidence.10 > 1", "no 'kld_by_confidence.10'"),
])
def test_bad_gates_exit_2_before_reading(tmp_path, capsys, expr, why):
    _data(tmp_path)
    assert _run(tmp_path, "--fail-if", expr, targets=False) == 2
    err = capsys.readouterr().err
    assert why in err and len(err.strip().splitlines()) == 1


def test_bad_options_exit_2(tmp_path, capsys):
    _data(tmp_path)
    assert _run(tmp_path, "--worst", "-1") == 2
    assert _run(tmp_path, "--topk", "0") == 2
    assert _run(tmp_path, "--chunk-mb", "0") == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["compare", "--logits", str(tmp_path / "m.npy")])          # --base missing
    assert exc.value.code == 2


def test_bad_input_exits_1_with_one_line_naming_the_file(tmp_path, capsys):
    b, m, t = _data(tmp_path)
    p = lambda name: str(tmp_path / name)  # noqa: E731
    np.save(tmp_path / "short.npy", m[:-1])
    np.save(tmp_path / "narrow.npy", m[:, :-1])
    np.save(tmp_path / "ints.npy", np.zeros(m.shape, np.int32))
    bad_t = t.copy()
    bad_t[11] = 500
    np.save(tmp_path / "bad_t.npy", bad_t)
    cases = [
        (["--base", p("nope.npy"), "--logits", p("m.npy")], "nope.npy: no such file"),
        (["--base", p("b.npy"), "--logits", p("short.npy")], "row counts differ"),
        (["--base", p("b.npy"), "--logits", p("narrow.npy")], "vocabulary sizes differ"),
        (["--base", p("ints.npy"), "--logits", p("m.npy")], "--base: " + p("ints.npy") + " has dtype int32"),
        (["--base", p("b.npy"), "--logits", p("m.npy"), "--targets", p("bad_t.npy")], "row 11 has class 500"),
        (["--base", p("b.npy"), "--logits", p("m.npy"), "--targets", p("short.npy")], "--targets: "),
    ]
    for argv, msg in cases:
        assert cli.main(["compare", *argv]) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fastdiv compare: error: ") and msg in err[0], err


def test_as_a_process_no_traceback(tmp_path):
    _data(tmp_path)
    np.save(tmp_path / "narrow.npy", np.zeros((300, 5), np.float32))
    proc = subprocess.run([sys.executable, "-m", "fastdiv", "compare", "--base", str(tmp_path / "b.npy"), "--logits",
                           str(tmp_path / "narrow.npy")], capture_output=True, text=True,
                          cwd=tmp_path)            # not the repository root: import the installed fastdiv
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "narrow.npy" in proc.stderr


def test_lookup_paths():
    doc = {"kld": {"quantiles": {"99": 1.0, "99.9": 2.0}}, "topk_agreement": {"5": 0.5}, "kld_by_confidence": [3.0]}
    assert _compare_cli.lookup(doc, "kld.quantiles.99.9".split(".")) == 2.0
    assert _compare_cli.lookup(doc, "kld.quantiles.99".split(".")) == 1.0
    assert _compare_cli.lookup(doc, ["topk_agreement", "5"]) == 0.5
    assert _compare_cli.lookup(doc, ["kld_by_confidence", "0"]) == 3.0
    with pytest.raises(KeyError):
        _compare_cli.lookup(doc, ["kld", "quantiles", "50"])
    assert _compare_cli.parse_gate(" ppl.ratio>=1.5e-2 ") == (["ppl", "ratio"], ">=", 0.015)


def test_npz_members_and_bfloat16_safetensors(tmp_path):
    from test_cli import _write_safetensors

    b, m, t = _data(tmp_path, rows=90, v=64, seed=2)
    want = _compare_cli.json_safe(fastdiv.compare(b, m, t).to_dict())
    np.savez(tmp_path / "d.npz", base=b, logits=m, targets=t)
    js = tmp_path / "o.json"
    npz = str(tmp_path / "d.npz")
    assert cli.main(["compare", "--base", npz, "--logits", npz, "--targets", npz, "--json", str(js),
                     "--chunk-mb", "0.01"]) == 0
    assert json.loads(js.read_text()) == want
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bb, mb = b.astype(ml_dtypes.bfloat16), m.astype(ml_dtypes.bfloat16)
    _write_safetensors(tmp_path / "h.safetensors", {"base": bb, "model": mb, "targets": t})
    st = str(tmp_path / "h.safetensors")
    assert cli.main(["compare", "--base", st, "--logits", st + ":model", "--targets", st, "--json", str(js)]) == 0
    got = json.loads(js.read_text())
    assert got == _compare_cli.json_safe(fastdiv.compare(bb, mb, t).to_dict())
    assert got["kld"]["mean"] == pytest.approx(want["kld"]["mean"], rel=0.05)


def test_plot(tmp_path, monkeypatch):
    _data(tmp_path)
    png = tmp_path / "p.png"
    if _has_matplotlib():
        assert _run(tmp_path, "--plot", str(png)) == 0 and png.stat().st_size > 10000
        assert _run(tmp_path, "--plot", str(tmp_path / "q.png"), targets=False) == 0
        assert _run(tmp_path, "--plot", str(tmp_path / "no_dir" / "p.png")) == 1
    monkeypatch.setitem(sys.modules, "matplotlib", None)            # as if not installed
    assert _run(tmp_path, "--plot", str(tmp_path / "r.png")) == 2
    assert not (tmp_path / "r.png").exists()


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_empty_files(tmp_path, capsys):
    np.save(tmp_path / "b.npy", np.zeros((0, 7), np.float32))
    np.save(tmp_path / "m.npy", np.zeros((0, 7), np.float32))
    np.save(tmp_path / "t.npy", np.zeros(0, np.int64))
    js = tmp_path / "o.json"
    assert _run(tmp_path, "--json", str(js)) == 0
    d = json.loads(js.read_text())
    assert d["rows"] == 0 and d["count"] == 0 and d["kld"]["mean"] is None and d["ppl"] == {
        k: None for k in d["ppl"]}
    assert "no row counted" in capsys.readouterr().err
    assert _run(tmp_path, "--fail-if", "kld.mean > 1") == 3                 # nothing measured: the gate fails


# --------------------------------------------------------------------------- compact references


def _compact_compare(ref, m, topk=(1, 5)):
    from fastdiv import _compact
    from fastdiv.comparison import Comparison

    cols, rows = _compact.per_row(ref, m, ignore_index=-100, topk=topk, backend="auto")
    return Comparison(cols, rows, topk, "targets" in ref)


def test_compact_reference_is_exact_where_the_issue_says_and_a_lower_bound_elsewhere():
    from fastdiv import _compact

    rng = np.random.default_rng(3)
    v = 60
    b = rng.standard_normal((150, v)) * rng.uniform(0.5, 5, (150, 1))
    m = b + 0.5 * rng.standard_normal((150, v))
    b[4, :20] = -np.inf                                   # masked classes in the base
    t = rng.integers(20, v, 150)
    t[::9] = -100
    dense = fastdiv.compare(b, m, t)
    for k in (v, v - 1):                                  # a tail of at most one class: exact
        got = _compact_compare(_compact.build(b, t, k, -100), m)
        for key in ("kld", "reverse_kld", "js", "nll_base", "p_base", "base_top1_prob"):
            np.testing.assert_allclose(getattr(got, key), getattr(dense, key), rtol=1e-9, atol=1e-13, err_msg=key)
    for k in (1, 5, 20):
        got = _compact_compare(_compact.build(b, t, k, -100), m)
        for key in ("kld", "reverse_kld", "js"):          # data processing: coarse-graining lowers them
            assert np.all(getattr(got, key) <= getattr(dense, key) + 1e-12), (k, key)
        assert np.mean(got.kld) < np.mean(dense.kld)
        np.testing.assert_array_equal(got.same_top1, dense.same_top1)
        np.testing.assert_array_equal(got.topk[5], dense.topk[5])
        np.testing.assert_allclose(got.delta_p, dense.delta_p, rtol=1e-12, atol=1e-15)
        assert got.to_dict()["ppl"] == pytest.approx(dense.to_dict()["ppl"], rel=1e-12)
    noref = _compact_compare(_compact.build(b, None, 5, -100), m)
    assert noref.to_dict()["ppl"] is None and noref.count == 150


def test_reference_command_and_compare_from_it(tmp_path, capsys):
    b, m, t = _data(tmp_path, rows=300, v=120, seed=4)
    ref = str(tmp_path / "ref.safetensors")
    assert cli.main(["reference", "--logits", str(tmp_path / "b.npy"), "--targets", str(tmp_path / "t.npy"),
                     "--topk", "16", "--out", ref, "--chunk-mb", "0.01"]) == 0
    assert "smaller than float32 logits" in capsys.readouterr().out
    js, jd = tmp_path / "c.json", tmp_path / "d.json"
    assert cli.main(["compare", "--base", ref, "--logits", str(tmp_path / "m.npy"), "--json", str(js),
                     "--chunk-mb", "0.02", "--fail-if", "ppl.ratio > 100"]) == 0
    assert "a compact reference" in capsys.readouterr().out
    assert _run(tmp_path, "--json", str(jd)) == 0
    c, d = json.loads(js.read_text()), json.loads(jd.read_text())
    assert c["same_top1"] == d["same_top1"] and c["topk_agreement"] == d["topk_agreement"]
    assert c["ppl"] == pytest.approx(d["ppl"], rel=1e-6) and c["count"] == d["count"] == int(np.sum(t != -100))
    assert c["delta_p"]["mean"] == pytest.approx(d["delta_p"]["mean"], rel=1e-4, abs=1e-9)
    assert 0 < c["kld"]["mean"] < d["kld"]["mean"]
    # without targets; exit codes
    assert cli.main(["reference", "--logits", str(tmp_path / "b.npy"), "--out", ref]) == 0
    assert cli.main(["compare", "--base", ref, "--logits", str(tmp_path / "m.npy"), "--json", str(js)]) == 0
    assert json.loads(js.read_text())["ppl"] is None
    capsys.readouterr()
    assert cli.main(["compare", "--base", ref, "--logits", str(tmp_path / "m.npy"), "--fail-if", "ppl.ratio > 1"]) == 2
    assert cli.main(["compare", "--base", ref, "--logits", str(tmp_path / "m.npy"), "--targets",
                     str(tmp_path / "t.npy")]) == 2
    np.save(tmp_path / "narrow.npy", m[:, :-1])
    assert cli.main(["compare", "--base", ref, "--logits", str(tmp_path / "narrow.npy")]) == 1
    assert "vocabulary sizes differ" in capsys.readouterr().err
    assert cli.main(["reference", "--logits", str(tmp_path / "b.npy"), "--out", str(tmp_path / "r.npy")]) == 2
    assert cli.main(["reference", "--logits", str(tmp_path / "b.npy"), "--out", ref, "--topk", "0"]) == 2
    bad = t.copy()
    bad[5] = 999
    np.save(tmp_path / "bad.npy", bad)
    out = tmp_path / "bad.safetensors"
    assert cli.main(["reference", "--logits", str(tmp_path / "b.npy"), "--targets", str(tmp_path / "bad.npy"),
                     "--out", str(out)]) == 1
    assert "row 5 has class 999" in capsys.readouterr().err and not out.exists()


def test_reference_is_over_100x_smaller_at_k64_v32000(tmp_path):
    rng = np.random.default_rng(5)
    np.save(tmp_path / "b.npy", rng.standard_normal((16, 32000), dtype=np.float32))
    np.save(tmp_path / "t.npy", rng.integers(0, 32000, 16))
    ref = tmp_path / "ref.safetensors"
    assert cli.main(["reference", "--logits", str(tmp_path / "b.npy"), "--targets", str(tmp_path / "t.npy"),
                     "--out", str(ref)]) == 0
    assert 16 * 32000 * 4 / ref.stat().st_size >= 100
