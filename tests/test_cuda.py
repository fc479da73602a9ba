"""The cuda backend's kernels (fastdiv/_cuda) called directly on device arrays: the launch
paths the case table does not reach (misaligned rows, rows split over blocks, unroll
variants, many tiles), int32 and ignored targets, streams, argument errors, the device
reductions and interop.  Every op against the reference on each launch shape, through the
public API: tests/test_cases.py (``test_case_cuda``).

Runs on a GPU, or on the CPU in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``); skipped
with the reason when neither is available.  In the simulator the block sizes are patched
small so multi-warp, multi-block, split-row and misaligned (scalar-load) paths all run on
tiny shapes.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import zlib

import numpy as np
import pytest



def _import(name):
    return importlib.import_module(f"fastdiv.{name}")


if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0") and "numba.cuda" not in sys.modules:
    # numba reads NUMBA_ENABLE_CUDASIM when numba is imported (pytest may import numba early,
    # e.g. for a warnings filter): re-read it before numba.cuda loads.
    try:
        import numba.core.config

        numba.core.config.reload_config()
    except Exception:  # pragma: no cover
        pass

R = _import("reference")
try:
    K = _import("_cuda.kernels")
    REASON = K.unavailable_reason()
except Exception as exc:  # pragma: no cover
    K, REASON = None, f"{type(exc).__name__}: {exc}"

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(REASON is not None, reason=f"cuda backend unavailable: {REASON}"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

if REASON is None:
    from numba import cuda

    I = _import("_cuda.interop")


# ----------------------------------------------------------------------------- helpers


# The simulator's GIL switch interval: tests/conftest.py (_fast_simulator, every cuda test).


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()) + int.from_bytes(os.urandom(2), "little"))


def to_bf16_bits(a):
    """float32 -> bfloat16 bits (round to nearest even), as uint16."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    out = np.where(np.isnan(a), (u >> 16) | 0x40, rounded).astype(np.uint16)
    return out


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def device_input(a, kind):
    """(device array of ``kind``, the float64 values it holds)."""
    if kind == "bf16":
        bits = to_bf16_bits(a)
        return cuda.to_device(bits), from_bf16_bits(bits).astype(np.float64)
    dt = {"f32": np.float32, "f64": np.float64, "f16": np.float16}[kind]
    with np.errstate(over="ignore"):
        h = np.ascontiguousarray(a, dtype=dt)
    return cuda.to_device(h), h.astype(np.float64)


def out_for(rows, kind, poison=True):
    dt = np.float64 if kind == "f64" else np.float32
    h = np.full(rows, 12345.0 if poison else 0.0, dtype=dt)  # poisoned: every row must be written
    return cuda.to_device(h)


def edge_logits(rng, rows, V, scale=3.0):
    """Random logits with the reference's edge rows mixed in (at most ``rows`` rows)."""
    x = rng.standard_normal((rows, V)) * scale
    kinds = ["mask", "allneg", "startneg", "nan", "posinf", "offset", "rand"]
    for i in range(rows):
        k = kinds[i % len(kinds)] if i < len(kinds) else "rand"
        if k == "mask":
            x[i, rng.random(V) < 0.4] = -np.inf
        elif k == "allneg":
            x[i] = -np.inf
        elif k == "startneg":
            x[i, : max(1, V // 2)] = -np.inf
        elif k == "nan":
            x[i, rng.integers(V)] = np.nan
        elif k == "posinf":
            x[i, rng.integers(V)] = np.inf
        elif k == "offset":
            x[i] += 1000.0 if V > 1 else 0.0
    return x


def tol(kind):
    return dict(rtol=1e-9, atol=1e-9) if kind == "f64" else dict(rtol=2e-4, atol=2e-4)


def check(got, want, kind, what=""):
    got = np.asarray(got, dtype=np.float64)
    assert not np.any(got == 12345.0), f"{what}: rows left unwritten"
    np.testing.assert_allclose(got, want, equal_nan=True, err_msg=what, **tol(kind))


from cases import SMALL_KNOBS  # noqa: E402  (the launch knobs patched small, shared with tests/test_cases.py)


@pytest.fixture
def knobs(monkeypatch):
    def apply(**extra):
        for k, v in {**SMALL_KNOBS, **extra}.items():
            monkeypatch.setattr(K, k, v)

    return apply


# Launch shapes exercised, as case id -> (V, extra knobs, expected mode): V = 1 and 51 use
# the tile kernel (rows staged in shared memory; T = 32 rows per block here), "51-small" the
# register kernel (G = 8 lanes per row), 67 is forced into the block kernel (2 warps per
# block), 300 uses the warp-per-row kernel.
V_CASES = {
    "1": (1, {}, "tile"),
    "51": (51, {}, "tile"),
    "51-small": (51, {"TILE_MAX_V": 0}, "small"),
    "67-block": (67, {"SMALL_MAX_V": 64, "GROUP_MAX_V": 64, "TILE_MAX_V": 0}, "block"),
    "300": (300, {}, "group"),
}

# --------------------------------------------------------------- launch-path coverage


@pytest.mark.parametrize("kind", ["f32", "bf16"])
@pytest.mark.parametrize("path", ["misaligned-block", "misaligned-group", "misaligned-tile", "split"])
def test_paths(path, kind, knobs):
    """Scalar-load fallback for misaligned rows, and rows split over several blocks."""
    rows, V = 5, 150
    if path == "misaligned-block":
        knobs(SMALL_MAX_V=64, GROUP_MAX_V=64, TILE_MAX_V=0)
    elif path == "misaligned-group":
        knobs(TILE_MAX_V=64)
    elif path == "misaligned-tile":
        rows, V = 40, 37
        knobs()
        assert K.launch_plan(rows, V)[0] == "tile"
    else:
        knobs(SMALL_MAX_V=64, GROUP_MAX_V=64, TILE_MAX_V=0, SPLIT_MIN_COLS=40, SPLIT_TARGET_BLOCKS=12)
        mode, grid, block, extra = K.launch_plan(rows, V)
        assert mode == "block" and extra["nsplit"] > 1
    rng = _rng(path, kind)
    x = edge_logits(rng, rows, V)
    z = edge_logits(rng, rows, V)[::-1].copy()
    if path.startswith("misaligned"):
        # view rows that start one element past a 16-byte boundary
        dt = np.float32 if kind == "f32" else np.uint16
        hx_raw = to_bf16_bits(x) if kind == "bf16" else x.astype(np.float32)
        hz_raw = to_bf16_bits(z) if kind == "bf16" else z.astype(np.float32)
        bx = cuda.to_device(np.concatenate([np.zeros(1, dt), hx_raw.ravel()]))
        bz = cuda.to_device(np.concatenate([np.zeros(1, dt), hz_raw.ravel()]))
        dx = bx[1:].reshape(rows, V)
        dz = bz[1:].reshape(rows, V)
        hx = (from_bf16_bits(hx_raw) if kind == "bf16" else hx_raw).astype(np.float64)
        hz = (from_bf16_bits(hz_raw) if kind == "bf16" else hz_raw).astype(np.float64)
    else:
        dx, hx = device_input(x, kind)
        dz, hz = device_input(z, kind)
    out = out_for(rows, kind)
    K.kl_logits(dx, dz, 1.0, out, 1)
    check(out.copy_to_host(), R.kl_rows(hx, hz, "logits"), kind, f"{path} kl")
    t = _rng(path, "t").integers(0, V, rows)
    t[0] = -100
    out = out_for(rows, kind)
    K.ce_hard(dx, cuda.to_device(t), -100, None, 0.1, out, 1)
    check(out.copy_to_host(), R.cross_entropy_hard_rows(hx, t, -100, None, 0.1), kind, f"{path} ce")


@pytest.mark.parametrize("unroll", [1, 4])
def test_unroll_variants(unroll, knobs):
    """The group / block loops compiled with 1 and 4 loads in flight (default 2)."""
    knobs(SMALL_MAX_V=64, GROUP_MAX_V=64, TILE_MAX_V=0, UNROLL=unroll)
    rows, V = 4, 150
    rng = _rng("unroll", unroll)
    x = edge_logits(rng, rows, V)
    z = edge_logits(rng, rows, V)[::-1].copy()
    dx, hx = device_input(x, "f32")
    dz, hz = device_input(z, "f32")
    out = out_for(rows, "f32")
    K.kl_logits(dx, dz, 1.0, out, 1)
    check(out.copy_to_host(), R.kl_rows(hx, hz, "logits"), "f32", f"unroll={unroll} kl")
    p = np.exp(R.log_softmax_rows(z))
    dp, hp = device_input(p, "f32")
    out = out_for(rows, "f32")
    K.ce_soft(dx, dp, None, 0.9, 0.1 / V, 1.0, out, 1)
    check(out.copy_to_host(), R.cross_entropy_soft_rows(hx, hp, None, 0.1), "f32", f"unroll={unroll} ce_soft")


@pytest.mark.parametrize("V", [51, 64])
def test_many_rows_small_v(V, knobs):
    """Several tiles (blocks), a partial last tile, odd and even V (C51-like shape)."""
    knobs()
    rows = 70
    rng = _rng("c51", V)
    x = edge_logits(rng, rows, V)
    z = x + rng.standard_normal((rows, V))
    assert K.launch_plan(rows, V, 4, 2)[0] == "tile"
    dx, hx = device_input(x, "f32")
    dz, hz = device_input(z, "f32")
    out = out_for(rows, "f32")
    K.kl_logits(dx, dz, 1.0, out, 1)
    check(out.copy_to_host(), R.kl_rows(hx, hz, "logits"), "f32", "c51 kl")


def test_int32_targets_all_ignored_and_empty(knobs):
    knobs()
    rows, V = 4, 51
    x = _rng("ign").standard_normal((rows, V)).astype(np.float32)
    t = np.full(rows, -1, dtype=np.int32)
    out = out_for(rows, "f32")
    K.ce_hard(cuda.to_device(x), cuda.to_device(t), -1, None, 0.0, out, 1)
    assert np.all(out.copy_to_host() == 0.0)
    empty = cuda.to_device(np.zeros((0, V), np.float32))
    K.lse(empty, cuda.device_array(0, np.float32), 1)


def test_stream_keyword(knobs):
    knobs()
    rows, V = 3, 51
    x = _rng("stream").standard_normal((rows, V)).astype(np.float32)
    s = cuda.stream()
    out = out_for(rows, "f32")
    K.lse(cuda.to_device(x), out, 1, stream=s)
    s.synchronize()
    check(out.copy_to_host(), R.logsumexp_rows(x), "f32", "stream")


def test_errors():
    x = cuda.to_device(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="out"):
        K.lse(x, cuda.device_array(3, np.float32), 1)
    with pytest.raises(TypeError, match="float32"):
        K.lse(cuda.to_device(np.zeros((2, 3), np.int32)), cuda.device_array(2, np.float32), 1)
    with pytest.raises(TypeError, match="device array"):
        K.lse(np.zeros((2, 3), np.float32), cuda.device_array(2, np.float32), 1)
    with pytest.raises(ValueError, match="shape"):
        K.kl_logits(x, cuda.to_device(np.zeros((2, 4), np.float32)), 1.0, cuda.device_array(2, np.float32), 1)


# ------------------------------------------------------------------ device reductions


@pytest.mark.parametrize("n", [1, 100, 333])
def test_device_sum_and_mean(n, knobs):
    knobs()
    rng = _rng("sum", n)
    v = rng.standard_normal(n).astype(np.float32)
    d = cuda.to_device(v)
    got = K.device_sum(d).copy_to_host()
    np.testing.assert_allclose(got[0], v.astype(np.float64).sum(), rtol=1e-6, atol=1e-5)
    again = K.device_sum(d).copy_to_host()
    assert got[0] == again[0]  # deterministic
    np.testing.assert_allclose(K.device_mean(d).copy_to_host()[0], v.astype(np.float64).mean(), rtol=1e-6, atol=1e-6)
    V = 7
    t = rng.integers(0, V, n)
    t[::3] = -100
    w = (rng.random(V) + 0.1).astype(np.float32)
    out = cuda.device_array(1, np.float32)
    K.device_mean(d, cuda.to_device(t), -100, cuda.to_device(w), out=out)
    keep = t != -100
    want = v.astype(np.float64).sum() / w[t[keep]].astype(np.float64).sum() if keep.any() else np.nan
    np.testing.assert_allclose(out.copy_to_host()[0], want, rtol=1e-5, equal_nan=True)
    K.device_mean(d, cuda.to_device(np.full(n, -100)), -100, out=out)
    assert np.isnan(out.copy_to_host()[0])  # every target ignored -> NaN (torch's rule)


# ------------------------------------------------------------------------- interop


def test_interop_numba():
    a = cuda.to_device(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert I.is_device_array(a)
    assert not I.is_device_array(np.zeros(3))
    view, tag = I.to_device_view(a)
    assert view is a and tag.lib == "numba"
    assert I.wrap_like(view, tag) is view


@pytest.mark.skipif(SIM, reason="torch CUDA tensors need a real GPU")
def test_interop_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    rows, V = 64, 1000
    x = torch.randn(rows, V, device="cuda") * 3
    z = torch.randn(rows, V, device="cuda") * 3
    assert I.is_device_array(x) and not I.is_device_array(x.cpu())
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        xv, tag = I.to_device_view(x.to(dt))
        zv, _ = I.to_device_view(z.to(dt))
        assert tag.lib == "torch" and tag.bf16 == (dt == torch.bfloat16)
        out_t, out = I.empty_like_lib((rows,), np.float32, tag)
        K.kl_logits(xv, zv, 1.0, out, 1, stream=I.stream_for(tag), bf16=tag.bf16)
        want = torch.nn.functional.kl_div(
            torch.log_softmax(z.to(dt).double(), -1), torch.log_softmax(x.to(dt).double(), -1),
            log_target=True, reduction="none").sum(-1)
        torch.testing.assert_close(out_t.double(), want, rtol=2e-4, atol=2e-4)
        res = I.wrap_like(out, tag)
        assert isinstance(res, torch.Tensor) and res.data_ptr() == out_t.data_ptr()
