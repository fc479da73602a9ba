/* Logit soft-capping cap * tanh(x / cap), rows of a native float32 / float64 array into a
 * C-contiguous out: the transform of `softcap=` (fastdiv.execute.apply_softcap), for every CPU
 * backend when this extension is built.  Template, instantiated by _inst.h for native inputs.
 * No include guard on purpose.
 *
 * The same algorithm as fastdiv/_numba/softcap.py (the transform where this extension is not
 * built), whose docstring has the error analysis; with a = |y|, y = x / cap:
 *   - a < 0.625: cap tanh(y) = x + x z P(z), z = y^2 (Cephes tanhf, degree 5; tanh: rational
 *     3 / 3): x itself carries the leading term, so tiny x is returned to the last bit;
 *   - a >= 0.625: cap (1 - e) / (1 + e), e = exp(-2a) <= 0.29 (no cancellation; the exp's
 *     relative error is damped by 2e / (1 - e^2) < 0.7), with the sign put back by a select.
 *     fd_expz returns exactly 0 below its range: tanh = 1 there, +inf -> cap.
 *   - -inf (a masked class) stays -inf; NaN fails every compare and propagates.
 * The two implementations differ by the exps they use (this one: _simd.h's): within a few ulp
 * of each other, each within the bounds of tests/test_softcap.py. */

static inline FD_V FI(fd_capped)(FD_V xv, FD_V inv, FD_V cap)
{
    const FD_V zero = {0}, one = FN(fd_splat)((FD_T)1);
    FD_V y = xv * inv, a = FN(fd_abs)(y), z = y * y;
#if FD_INST == 0
    FD_V p = FN(fd_splat)(-5.70498872745e-3f);
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
#else
    FD_V p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z - 1.61468768441708447952e3;
    FD_V q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z + 4.84406305325125486048e3;
    p = p / q;
#endif
    FD_V near = xv + xv * (z * p);
    FD_V e = FN(fd_expz)((FD_T)-2 * a);
    FD_V far = (cap - cap * e) / (one + e);
    far = FN(fd_sel)(FN(fd_lt)(xv, zero), -far, far);
    far = FN(fd_sel)(FN(fd_eq)(xv, FN(fd_splat)(FD_NEG_INF)), xv, far);
    return FN(fd_sel)(FN(fd_lt)(a, FN(fd_splat)((FD_T)0.625)), near, far);
}

/* out[i, :] = cap tanh(x[i, :] inv) for rows x + i * ldx (unit stride within a row), out
   C-contiguous (rows, V); inv = 1 / cap and cap already rounded to FD_T by the caller.  One
   thread: the callers run one worker per fastdiv thread, each on an L2-sized block. */
static void FI(fd_softcap_rows)(const FD_T *x, ptrdiff_t rows, ptrdiff_t V, ptrdiff_t ldx, FD_T inv_s,
                                FD_T cap_s, FD_T *out)
{
    const FD_V inv = FN(fd_splat)(inv_s), cap = FN(fd_splat)(cap_s);
    for (ptrdiff_t i = 0; i < rows; i++) {
        const FD_T *xr = x + i * ldx;
        FD_T *o = out + i * V;
        ptrdiff_t j = 0;
        for (; j + FD_W <= V; j += FD_W) {
            FD_PFI(xr + j);
            *(FD_V_U *)(o + j) = FI(fd_capped)(FI(fd_ld)(xr + j), inv, cap);
        }
        if (j < V) {
            FD_T tail[FD_W] __attribute__((aligned(64)));
            *(FD_V *)tail = FI(fd_capped)(FI(fd_ldt)(xr + j, V - j, (FD_T)0), inv, cap);
            for (ptrdiff_t k = 0; k < V - j; k++)
                o[j + k] = tail[k];
        }
    }
}
