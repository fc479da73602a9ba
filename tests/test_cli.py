"""The command line: the demo (main job), config and bench run end to end on small sizes."""
from __future__ import annotations

import json

import pytest

from fastdiv import cli


def test_demo_small(capsys):
    assert cli.main(["demo", "--rows", "64", "--vocab", "1000", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "throughput" in out and "numpy" in out


def test_config(capsys):
    assert cli.main(["config"]) == 0
    assert "backends" in capsys.readouterr().out


def test_bench_table_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    argv = ["bench", "--shapes", "64x51", "8x3000", "--ops", "cross_entropy", "kl_div", "--repeat", "1",
            "--peers", "numpy", "--json", str(js)]
    try:
        import matplotlib  # noqa: F401
        argv += ["--plot", str(png)]
    except ImportError:
        png = None
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "% probe" in out and "64x51" in out
    records = json.loads(js.read_text())["records"]
    assert {r["op"] for r in records} == {"cross_entropy", "kl_div"}
    if png is not None:
        assert png.stat().st_size > 1000


def test_bench_rejects_bad_shapes():
    with pytest.raises(SystemExit):
        cli.main(["bench", "--shapes", "12by3"])


# --------------------------------------------------------------------------- fastdiv eval

import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

import fastdiv  # noqa: E402
from fastdiv import _files  # noqa: E402


def _eval_data(rows=300, v=257, seed=None, lead=None):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, v)) * 3).astype(np.float32)
    x[3, :10] = -np.inf                                   # masked classes
    r = (x + rng.standard_normal((rows, v)).astype(np.float32)).astype(np.float32)
    t = rng.integers(0, v, rows)
    t[::9] = -100
    if lead is not None:
        x, r, t = x.reshape(*lead, v), r.reshape(*lead, v), t.reshape(lead)
    return x, t, r


def _expected(x, t, r=None, topk=(1, 5)):
    """The metrics straight from the in-memory functions and numpy (the oracle of the command)."""
    v = x.shape[-1]
    x2, t1 = x.reshape(-1, v).astype(np.float64), t.reshape(-1)
    keep = t1 != -100
    nll = fastdiv.cross_entropy(x2, t1, reduction="none")[keep]
    out = {"tokens": int(keep.sum()), "mean_nll": float(np.mean(nll))}
    out["perplexity"] = float(np.exp(out["mean_nll"]))
    xt = x2[keep][np.arange(keep.sum()), t1[keep]]
    rank = 1 + (x2[keep] > xt[:, None]).sum(axis=1)
    for k in topk:
        out[f"accuracy@{k}"] = float(np.mean((rank <= k) & np.isfinite(nll)))
    out["mean_entropy"] = float(np.mean(fastdiv.entropy(x2)[keep]))
    out["mean_logsumexp"] = float(np.mean(fastdiv.logsumexp(x2)[keep]))
    if r is not None:
        r2 = r.reshape(-1, v).astype(np.float64)
        out["mean_kl"] = float(np.mean(fastdiv.kl_div(r2, x2, reduction="none")[keep]))
        out["mean_reverse_kl"] = float(np.mean(fastdiv.kl_div(x2, r2, reduction="none")[keep]))
    return out


def _assert_metrics(got, want, rtol=2e-6):
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=rtol, abs=1e-7), name


def _eval_json(tmp_path, *argv):
    out = tmp_path / "out.json"
    assert cli.main(["eval", *argv, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_eval_npy_matches_in_memory_functions_across_chunk_sizes(tmp_path, capsys):
    x, t, r = _eval_data()
    for name, a in (("l", x), ("t", t), ("r", r)):
        np.save(tmp_path / f"{name}.npy", a)
    args = ["--logits", str(tmp_path / "l.npy"), "--targets", str(tmp_path / "t.npy"),
            "--reference", str(tmp_path / "r.npy"), "--topk", "1", "5", "50"]
    one = _eval_json(tmp_path, *args)
    many = _eval_json(tmp_path, *args, "--chunk-mb", "0.01")        # 9 rows a chunk
    assert many["inputs"]["chunk_rows"] < 10 and one["inputs"]["chunk_rows"] >= 300
    _assert_metrics(one["metrics"], _expected(x, t, r, topk=(1, 5, 50)))
    for name, value in one["metrics"].items():
        assert many["metrics"][name] == pytest.approx(value, rel=1e-12), name
    assert "perplexity" in capsys.readouterr().out


def test_eval_leading_axes_flat_targets_fortran_order_and_backends(tmp_path):
    x, t, _ = _eval_data(rows=60, lead=(6, 10))
    np.save(tmp_path / "l.npy", x)
    np.save(tmp_path / "t.npy", t)
    np.save(tmp_path / "tflat.npy", t.reshape(-1))
    np.save(tmp_path / "lf.npy", np.asfortranarray(x.reshape(60, -1)))
    want = _expected(x, t)
    for logits, targets in (("l", "t"), ("l", "tflat"), ("lf", "tflat")):
        for backend in ("numpy", "auto"):
            got = _eval_json(tmp_path, "--logits", str(tmp_path / f"{logits}.npy"), "--targets",
                             str(tmp_path / f"{targets}.npy"), "--chunk-mb", "0.005", "--backend", backend)
            _assert_metrics(got["metrics"], want)


def _write_safetensors(path, tensors):
    """A minimal safetensors writer (the format: u64 header length, JSON header, raw data)."""
    codes = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<f2"): "F16", np.dtype("<i8"): "I64",
             np.dtype("<i4"): "I32"}
    header, blobs, offset = {"__metadata__": {"by": "fastdiv tests"}}, [], 0
    for name, a in tensors.items():
        code = "BF16" if a.dtype.name == "bfloat16" else codes[a.dtype]
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_eval_npz_and_safetensors_are_mapped_or_streamed(tmp_path):
    x, t, r = _eval_data(rows=120)
    np.savez(tmp_path / "d.npz", logits=x, targets=t, reference=r)
    np.savez_compressed(tmp_path / "c.npz", logits=x, targets=t)
    _write_safetensors(tmp_path / "d.safetensors", {"logits": x, "targets": t.astype(np.int32)})
    want = _expected(x, t)
    for f in ("d.npz", "c.npz", "d.safetensors"):
        spec = str(tmp_path / f)
        got = _eval_json(tmp_path, "--logits", spec, "--targets", spec + ":targets", "--chunk-mb", "0.01")
        _assert_metrics(got["metrics"], want)
    # mapped, not read: the chunks are views of a memory map
    for f in ("d.npz", "d.safetensors"):
        src = _files.open_rows(str(tmp_path / f), role="logits", row_ndim=1)
        assert isinstance(src.read(0, 5), np.memmap)
        np.testing.assert_array_equal(src.read(7, 9), x[7:9])
    got = _eval_json(tmp_path, "--logits", str(tmp_path / "d.npz"), "--targets", str(tmp_path / "d.npz"),
                     "--reference", str(tmp_path / "d.npz:reference"))
    _assert_metrics(got["metrics"], _expected(x, t, r))


def test_eval_safetensors_bfloat16_and_the_reference_package(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x, t, _ = _eval_data(rows=50)
    xb = x.astype(ml_dtypes.bfloat16)
    _write_safetensors(tmp_path / "b.safetensors", {"logits": xb, "targets": t})
    got = _eval_json(tmp_path, "--logits", str(tmp_path / "b.safetensors"), "--targets",
                     str(tmp_path / "b.safetensors"))
    _assert_metrics(got["metrics"], _expected(xb.astype(np.float32), t))
    try:
        from safetensors.numpy import save_file
    except ImportError:
        return
    save_file({"logits": x, "targets": t}, str(tmp_path / "p.safetensors"))   # the package's own writer
    got = _eval_json(tmp_path, "--logits", str(tmp_path / "p.safetensors"), "--targets",
                     str(tmp_path / "p.safetensors"))
    _assert_metrics(got["metrics"], _expected(x, t))


def test_eval_topk_ties_count_for_the_target_and_masked_targets_never_do(tmp_path):
    x = np.array([[1.0, 1.0, 1.0, 0.0], [2.0, 1.0, 1.0, 1.0], [0.0, -np.inf, -np.inf, -np.inf],
                  [0.0, 0.5, 0.2, 0.1]], np.float32)
    t = np.array([2, 3, 1, 1])            # tie at the top; tie below one; masked target; rank 1
    np.save(tmp_path / "l.npy", x)
    np.save(tmp_path / "t.npy", t)
    got = _eval_json(tmp_path, "--logits", str(tmp_path / "l.npy"), "--targets", str(tmp_path / "t.npy"),
                     "--topk", "1", "2")["metrics"]
    assert got["accuracy@1"] == pytest.approx(2 / 4) and got["accuracy@2"] == pytest.approx(3 / 4)
    assert got["mean_nll"] == float("inf")


def test_eval_progress_bar_on_request(tmp_path, capsys):
    x, t, _ = _eval_data(rows=40)
    np.save(tmp_path / "l.npy", x)
    np.save(tmp_path / "t.npy", t)
    assert cli.main(["eval", "--logits", str(tmp_path / "l.npy"), "--targets", str(tmp_path / "t.npy"),
                     "--progress", "--chunk-mb", "0.01"]) == 0
    err = capsys.readouterr().err
    assert "rows/s" in err and "GB/s" in err and "ETA" in err and "40/40 rows" in err
    assert cli.main(["eval", "--logits", str(tmp_path / "l.npy"), "--targets", str(tmp_path / "t.npy")]) == 0
    assert "rows/s" not in capsys.readouterr().err       # not a terminal, not asked


def test_eval_bad_input_exits_1_with_a_message(tmp_path, capsys):
    x, t, _ = _eval_data(rows=20, v=11)
    for name, a in (("l", x), ("t", t), ("tf", t.astype(np.float32)), ("li", t.reshape(4, 5)),
                    ("short", t[:-1]), ("r2", x[:, :5]), ("obj", np.array([1, "a"], dtype=object))):
        np.save(tmp_path / f"{name}.npy", a)
    bad_t = t.copy()
    bad_t[13] = 11
    np.save(tmp_path / "bad.npy", bad_t)
    np.savez(tmp_path / "two.npz", a=x, b=t)
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 4)
    (tmp_path / "x.txt").write_text("1 2 3")
    p = lambda n: str(tmp_path / n)  # noqa: E731
    cases = [
        (["--logits", p("missing.npy"), "--targets", p("t.npy")], "no such file"),
        (["--logits", p("l.npy"), "--targets", p("tf.npy")], "expected integer class indices"),
        (["--logits", p("li.npy"), "--targets", p("t.npy")], "int64; expected float16"),
        (["--logits", p("l.npy"), "--targets", p("short.npy")], "row counts differ"),
        (["--logits", p("l.npy"), "--targets", p("li.npy")], "shapes differ"),
        (["--logits", p("l.npy"), "--targets", p("t.npy"), "--reference", p("r2.npy")], "must match --logits"),
        (["--logits", p("l.npy"), "--targets", p("bad.npy"), "--chunk-mb", "0.0001"], "row 13 has class 11"),
        (["--logits", p("two.npz"), "--targets", p("t.npy")], "name one as"),
        (["--logits", p("two.npz:zz"), "--targets", p("t.npy")], "no array named 'zz'"),
        (["--logits", p("junk.safetensors"), "--targets", p("t.npy")], "too short"),
        (["--logits", p("x.txt"), "--targets", p("t.npy")], "unknown file type"),
        (["--logits", str(tmp_path), "--targets", p("t.npy")], "is a directory"),
        (["--logits", p("obj.npy"), "--targets", p("t.npy")], "Python objects"),
    ]
    for argv, message in cases:
        assert cli.main(["eval", *argv]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("fastdiv eval: error:") and message in err, (argv, err)
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "--logits", p("l.npy")])            # --targets missing: a usage error
    assert exc.value.code == 2
    assert cli.main(["eval", "--logits", p("l.npy"), "--targets", p("t.npy"), "--topk", "0"]) == 2


def test_eval_as_a_process_exit_status_and_no_traceback(tmp_path):
    np.save(tmp_path / "l.npy", np.ones((3, 4), np.float32))
    np.save(tmp_path / "t.npy", np.arange(4))
    proc = subprocess.run([sys.executable, "-m", "fastdiv", "eval", "--logits", str(tmp_path / "l.npy"),
                           "--targets", str(tmp_path / "t.npy")], capture_output=True, text=True,
                          cwd=tmp_path)            # not the repository root: import the installed fastdiv
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "row counts differ" in proc.stderr


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in ("demo", "config", "bench", "eval"))
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    out = capsys.readouterr().out
    for option in ("--logits", "--targets", "--reference", "--topk", "--ignore-index", "--backend", "--json",
                   "--chunk-mb", "--progress", "--threads", "safetensors", "Exit status"):
        assert option in out, option


_RSS_SCRIPT = """
import sys
from fastdiv import _eval_cli
def status_mb(field):            # this process's own resident / peak resident memory (VmRSS, VmHWM)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024
_eval_cli.evaluate_files(sys.argv[3], sys.argv[4], topk=(1, 5), chunk_bytes=1 << 10)   # warm up on a small file
before = status_mb("VmRSS")
metrics, info = _eval_cli.evaluate_files(sys.argv[1], sys.argv[2], topk=(1, 5), chunk_bytes=8 << 20)
print(status_mb("VmHWM") - before, metrics["tokens"])
"""


def test_eval_memory_stays_at_about_one_chunk(tmp_path):
    rows, v = 2048, 32768                                  # a 256 MiB float32 file
    logits = np.lib.format.open_memmap(tmp_path / "l.npy", mode="w+", dtype=np.float32, shape=(rows, v))
    rng = np.random.default_rng()
    for r0 in range(0, rows, 256):
        logits[r0:r0 + 256] = rng.standard_normal((256, v), dtype=np.float32)
    logits.flush()
    del logits
    np.save(tmp_path / "t.npy", rng.integers(0, v, rows))
    np.save(tmp_path / "small.npy", rng.standard_normal((rows, 8), dtype=np.float32))
    np.save(tmp_path / "small_t.npy", rng.integers(0, 8, rows))
    files = [str(tmp_path / f) for f in ("l.npy", "t.npy", "small.npy", "small_t.npy")]
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, *files], capture_output=True, text=True, check=True,
                          cwd=tmp_path)            # not the repository root: import the installed fastdiv
    growth_mb, tokens = proc.stdout.split()
    assert int(tokens) == rows
    assert float(growth_mb) < 64, f"resident memory grew by {growth_mb} MB over a 256 MiB file in 8 MB chunks"
