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
