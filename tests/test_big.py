"""64-bit indexing: N * V > 2^31 elements handed to the kernels whole (no row blocking).

The first test hands np.zeros (calloc): untouched pages are the kernel's shared zero page, so 8.7 GB
of virtual memory costs little RAM; only the first and last rows are written."""
from __future__ import annotations

import numpy as np
import pytest

import fastdiv
from fastdiv import reference as R

from conftest import COMPILED, assert_rows_close

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", COMPILED)
def test_more_than_2_31_elements(backend, rng):
    rows, v = 17000, 128256                          # 2.18e9 elements > 2^31
    assert rows * v > 2**31
    try:
        x = np.zeros((rows, v), dtype=np.float32)
    except MemoryError:
        pytest.skip("cannot reserve 8.7 GB of virtual memory here")
    x[:2] = rng.standard_normal((2, v)) * 3
    x[-2:] = rng.standard_normal((2, v)) * 3
    x[-1, : v // 3] = -np.inf
    t = np.zeros(rows, dtype=np.int64)
    t[-2:] = [v - 1, v - 2]                          # targets beyond element 2^31
    for lo, hi in ((0, 2), (rows - 2, rows)):
        want = R.logsumexp_rows(x[lo:hi])
        assert_rows_close(fastdiv.logsumexp(x, backend=backend)[lo:hi], want, np.float32, "big lse")
    ce = fastdiv.cross_entropy(x, t, reduction="none", backend=backend)
    assert_rows_close(ce[-2:], R.cross_entropy_hard_rows(x[-2:], t[-2:]), np.float32, "big ce")
    assert np.allclose(ce[2:-2], np.log(v), rtol=1e-6)  # all-zero rows: uniform


# --------------------------------------------------------------------------- a memmap > 4 GiB

_MEMMAP_RUN = r"""
import json, sys
import numpy as np
import fastdiv, rss
path, rows, v, backend, tpath, out = sys.argv[1:7]
x = np.memmap(path, np.float16, "r", shape=(int(rows), int(v)))
t = np.load(tpath)
fastdiv.cross_entropy(x[:2], t[:2], backend=backend)          # compile / load before measuring
exact = rss.peak_rss_reset()
base = rss.rss_bytes()
ce = fastdiv.cross_entropy(x, t, reduction="none", backend=backend)   # reads every row: lse - x[t]
np.save(out, ce)
print(json.dumps({"base": base, "peak": rss.peak_rss_bytes(), "exact": exact}))
"""


@pytest.fixture(scope="module")
def memmap_over_4gib(tmp_path_factory):
    """A 4.36 GB float16 file of 17000 x 128256 random logits (2.18e9 elements > 2^31).

    Its rows are drawn (at random) from 61 random rows, so the float64 reference is computed
    per distinct row, and a row read from the wrong place (an offset that wrapped at 2^31)
    disagrees with its reference with probability 60/61.  Written in 256-row chunks."""
    rows, v, distinct = 17000, 128256, 61
    rng = np.random.default_rng(2026)
    pool = rng.standard_normal((distinct, v)) * rng.uniform(0.5, 4, (distinct, 1)) + rng.uniform(-20, 20, (distinct, 1))
    pool[1, : v // 2] = -np.inf                      # a masked prefix
    pool[2, rng.random(v) < 0.5] = -np.inf            # scattered masks
    pool[3] = -np.inf                                 # a fully masked row
    pool = pool.astype(np.float16)
    which = rng.integers(0, distinct, rows)
    which[-3:] = [1, 2, 3]                            # the edge rows beyond element 2^31 too
    target = rng.integers(0, v, rows)
    target[-2] = int(np.flatnonzero(np.isfinite(pool[2].astype(np.float64)))[0])
    path = tmp_path_factory.mktemp("big") / "logits_f16.bin"
    with open(path, "wb") as f:
        for r0 in range(0, rows, 256):
            pool[which[r0:r0 + 256]].tofile(f)
    assert path.stat().st_size == rows * v * 2 > 4 * 2**30
    want_ce = -R.log_softmax_rows(pool)[which, target]   # float64 reference, per distinct row
    tpath = path.with_name("target.npy")
    np.save(tpath, target)
    yield path, rows, v, tpath, want_ce
    path.unlink()                                     # pytest keeps old tmp dirs: not 4 GB of them


@pytest.mark.parametrize("backend", COMPILED)
def test_memmap_over_4gib_in_bounded_memory(backend, memmap_over_4gib, tmp_path):
    """A float16 memmap larger than 4 GiB gives the reference's answer for every row, and the
    process's peak RSS grows by far less than the file (row chunks, pages released)."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    path, rows, v, tpath, want_ce = memmap_over_4gib
    here = pathlib.Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(here), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "out.npy"
    proc = subprocess.run([sys.executable, "-c", _MEMMAP_RUN, str(path), str(rows), str(v), backend, str(tpath), str(out)],
                          capture_output=True, text=True, env=env, timeout=900,
                          cwd=str(here))     # not the repository root: import the installed fastdiv
    assert proc.returncode == 0, proc.stderr[-3000:]
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    assert_rows_close(np.load(out), want_ce, np.float32, "memmap cross-entropy")
    extra = mem["peak"] - mem["base"]       # without a peak reset an upper bound (the peak so far)
    print(f"{backend}: file {path.stat().st_size / 2**30:.2f} GiB, peak RSS +{extra / 2**20:.0f} MiB")
    assert extra < 256 * 2**20, f"peak RSS grew by {extra / 2**20:.0f} MiB reading a {path.stat().st_size / 2**30:.1f} GiB memmap"
