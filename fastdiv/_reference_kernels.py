"""The ``numpy`` backend: ``fastdiv.reference`` behind the kernel contract of ``_registry``.

Computes in float64 (it is the oracle), then stores into ``out`` of the caller's dtype.
"""
import numpy as np

from . import reference


def _scaled(x, scale):
    """Logits divided by the temperature (``scale = 1 / T``), in float64 like the reference."""
    return x if scale == 1.0 else np.asarray(x, dtype=np.float64) * scale


def lse(x, out, nthreads):
    out[:] = reference.logsumexp_rows(x)


def entropy_logits(x, scale, out, nthreads):
    out[:] = reference.entropy_rows(_scaled(x, scale), "logits")


def entropy_log_probs(x, out, nthreads):
    out[:] = reference.entropy_rows(x, "log_probs")


def entropy_probs(x, out, nthreads):
    out[:] = reference.entropy_rows(x, "probs")


def kl_logits(p, q, scale, out, nthreads):
    out[:] = reference.kl_rows(_scaled(p, scale), _scaled(q, scale), "logits")


def kl_log_probs(p, q, out, nthreads):
    out[:] = reference.kl_rows(p, q, "log_probs")


def kl_probs(p, q, out, nthreads):
    out[:] = reference.kl_rows(p, q, "probs")


def ce_hard(x, target, ignore_index, weight, eps, out, nthreads):
    out[:] = reference.cross_entropy_hard_rows(x, target, ignore_index, weight, eps)


def ce_soft(x, p, weight, alpha, beta, scale, out, nthreads):
    # The API passes alpha = 1 - eps, beta = eps / V (label smoothing).
    out[:] = reference.cross_entropy_soft_rows(_scaled(x, scale), p, weight, 1.0 - alpha)


def evaluate(x, z, target, st, ix, nthreads):
    """The ``evaluate`` state (see fastdiv/_numba/evaluate.py) computed in float64 with numpy."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    n, v = x.shape
    t = np.asarray(target)
    has_t = (t >= 0) & (t < v)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m, s, w = _shifted_sums(x)
        xt = np.where(has_t, x[np.arange(n), np.where(has_t, t, 0)], st[:, 3])   # the caller's threshold
        st[:, 0], st[:, 1], st[:, 2], st[:, 3] = m, s, w, xt
        ix[:, 0] = np.argmax(x, axis=1)
        ix[:, 1] = np.sum(x > xt[:, None], axis=1)
        ix[:, 2] = 0
        if z.shape[0]:
            z = np.asarray(z, dtype=np.float64)
            mz, sz, _ = _shifted_sums(z)
            dx = x - np.where(np.isfinite(m), m, 0.0)[:, None]
            dz = z - np.where(np.isfinite(mz), mz, 0.0)[:, None]
            both = (dx > -np.inf) & (dz > -np.inf)
            st[:, 4], st[:, 5] = mz, sz
            st[:, 6] = np.sum(np.where(both, np.exp(dx) * (dx - dz), 0.0), axis=1)
            st[:, 7] = np.sum(np.where(both, np.exp(dz) * (dz - dx), 0.0), axis=1)
            ix[:, 2] = (np.any((x > -np.inf) & (z == -np.inf), axis=1) * 1
                        + np.any((z > -np.inf) & (x == -np.inf), axis=1) * 2)
            if st.shape[1] == 10:          # the KL columns, where both rows have a finite maximum
                kls = (np.isfinite(m) & np.isfinite(mz))[:, None]
                st[:, 8:10] = np.where(kls, np.stack([reference.kl_rows(x, z), reference.kl_rows(z, x)], axis=1),
                                       st[:, 8:10])


def compare(x, z, target, st, ix, nthreads):
    """The ``compare`` state (contract: fastdiv/_registry.py) in float64: x the model, z the base."""
    n, v = x.shape
    evaluate(x, z, target, st[:, :8], ix[:, :3], nthreads)
    z64 = np.asarray(z, dtype=np.float64)
    x64 = np.asarray(x, dtype=np.float64)
    t = np.asarray(target)
    has_t = (t >= 0) & (t < v)
    rows = np.arange(n)
    st[:, 8] = np.where(has_t, z64[rows, np.where(has_t, t, 0)], np.nan)
    st[:, 9] = reference.js_rows(z64, x64, 0.5, "logits")
    with np.errstate(invalid="ignore"):
        kls = (np.isfinite(st[:, 0]) & np.isfinite(st[:, 4]))[:, None]
    st[:, 10:12] = np.where(kls, np.stack([reference.kl_rows(z64, x64), reference.kl_rows(x64, z64)], axis=1), np.nan)
    mz = st[:, 4]
    top = np.argmax(z64, axis=1)                 # the first maximum (the first NaN where there is one)
    ix[:, 3] = top
    xr = x64[rows, top]
    with np.errstate(invalid="ignore"):
        valid = (mz > -np.inf) & (st[:, 0] > -np.inf) & (st[:, 0] < np.inf) & (xr > -np.inf)
        ix[:, 1] = np.where(valid, np.sum(x64 > xr[:, None], axis=1), -1)


def _shifted_sums(x):
    """Row max m, s = sum e^(x - sh), w = sum e^(x - sh) (x - sh) with sh = m, or 0 if m is not finite.

    s is formed as the compiled kernels form it, c + r: c counts the entries equal to a finite
    m (each exactly 1), r sums the others.  Summed in one pass with the 1s, a confident row's
    small terms lost ~10 ulps of 1 to the pairwise additions, and an NLL of 3e-9 from it was
    4e-7 off the plain kernel's (a seed of test_z_loss_and_return_lse, 2026-12-05)."""
    m = np.max(x, axis=1)
    fin = np.isfinite(m)
    d = x - np.where(fin, m, 0.0)[:, None]
    e = np.exp(d)
    top = (d == 0) & fin[:, None]
    s = np.sum(top, axis=1) + np.sum(np.where(top, 0.0, e), axis=1)
    return m, s, np.sum(np.where(e > 0, e * d, 0.0), axis=1)


def js_logits(x, z, beta, scale, out, nthreads):
    out[:] = reference.js_rows(_scaled(x, scale), _scaled(z, scale), beta, "logits")


def js_log_probs(a, b, beta, out, nthreads):
    out[:] = reference.js_rows(a, b, beta, "log_probs")


def js_probs(p, q, beta, out, nthreads):
    out[:] = reference.js_rows(p, q, beta, "probs")


def topk_kl(idx, t, z, bucket, out, nthreads):
    out[:] = reference.topk_kl_rows(idx, t, z, "bucket" if bucket else "renormalize")
