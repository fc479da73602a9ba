"""Scalar math that LLVM's loop vectoriser can turn into SIMD code.

numba lowers ``math.exp``/``math.log`` to scalar libm calls (no SVML here) and its
``max()`` reductions do not vectorise, which caps a kernel at a fraction of memory
bandwidth.  These replacements are branch-free and use only operations with vector
forms: comparisons + selects, floor, fused multiply-adds and integer bit manipulation.

Every function here handles the IEEE special values itself (``exp(-inf) = 0``,
``exp(+inf) = inf``, NaN in gives NaN out) because the kernels must never use
``nnan``/``ninf`` fast-math: masked logits are ``-inf``.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# Fast-math flags for every kernel: reassociation (split sums across vector lanes),
# contraction (FMA), no signed zeros and reciprocal approximations.  Never nnan/ninf.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

#: numba's default error model ("python") tests every float division for a zero divisor to
#: raise ZeroDivisionError: a branch that keeps any loop containing a division (every log)
#: scalar -- 3.5 vs 0.36 ns per float32 log.  "numpy" gives IEEE results (inf, NaN) instead,
#: which the kernels expect anyway.
#: Serial: the row split across threads is fastdiv._numba.threads' (why: its docstring).
JIT = dict(fastmath=FASTMATH, cache=True, nogil=True, error_model="numpy")
INLINE = dict(inline="always", fastmath=FASTMATH, error_model="numpy")


def read_only(*arrays):
    """The kernels' input arrays as read-only views (no copy).  numba compiles one
    specialization per argument type, and a read-only array (a memmap opened "r", a frozen
    view) is another type than a writable one: handing every input over read-only keeps one
    specialization per dtype instead of two (the kernels never write their inputs)."""
    out = []
    for a in arrays:
        if a.flags.writeable:
            a = a.view()
            a.flags.writeable = False
        out.append(a)
    return out


def guard(out, *arrays):
    """O(1) shape checks before a kernel: the jitted loops do no bounds checking (defence in
    depth; the API has validated everything already)."""
    x = arrays[0]
    for a in arrays:
        if a.ndim != 2 or a.shape != x.shape or a.dtype != x.dtype:
            raise ValueError(f"kernel inputs must be 2-D arrays of one shape and dtype, got {[(b.shape, b.dtype) for b in arrays]}")
    if x.shape[1] < 1 or out.shape != (x.shape[0],):
        raise ValueError(f"out must have shape ({x.shape[0]},) and V >= 1, got out {out.shape} for input {x.shape}")


@intrinsic
def maximum(typingctx, a, b):
    """``llvm.maximum``: IEEE-754 2019 maximum, NaN-propagating, and it vectorises as a reduction."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maximum", [ty], ir.FunctionType(ty, [ty, ty]))
        return builder.call(fn, args)

    return a(a, b), codegen


@intrinsic
def prefetch(typingctx, arr, idx):
    """``llvm.prefetch`` into L2 (``prefetcht1``) of the cache line holding ``arr[idx]``.

    From DRAM the exp-heavy loops ran at half their cache-resident speed: memory and
    compute did not overlap.  Spreading L2 prefetches a few KB ahead through the loop
    recovered part of it (2.2 -> 2.7 G elem/s per core on the Xeon CI machine).
    """
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(2), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


#: The fused loops work on sub-blocks of SUB elements and, before each, ask for the
#: sub-block PREFETCH_BYTES ahead: one prefetch per 64-byte line, spread through the
#: computation instead of in bursts (a burst stalls on the core's few fill buffers).
SUB = 512
PREFETCH_BYTES = 4096
#: KL streams two rows: half-size sub-blocks keep each burst at 8 lines per row (one
#: thread from memory, 2048 x 50257: 0.63 -> 0.53 ns/pair; lse/CE/entropy prefer 512).
KL_SUB = 256


@njit(**INLINE)
def prefetch_ahead(row, b0, n):
    """Prefetch the n elements PREFETCH_BYTES ahead of row[b0] (clipped to the row).  Keep
    it written out like this: a version calling a general span helper compiled to the same
    prefetches but with eight address registers live across the lse loop (stack spills),
    and lse from memory ran 20 % slower (0.29 -> 0.35 ns/element, one thread; in cache
    unchanged)."""
    step = 64 // row.itemsize
    p0 = b0 + PREFETCH_BYTES // row.itemsize
    for k in range(p0, min(p0 + n, row.shape[0]), step):
        prefetch(row, k)


@intrinsic
def prefer_wide_vectors(typingctx):
    """Mark the function being compiled with ``"prefer-vector-width"="512"``.

    LLVM tunes most AVX-512 CPUs to prefer 256-bit vectors (a precaution against
    clock throttling on old Xeons); on the CI machine's Xeon the exp loops ran 1.4x faster
    with 512-bit vectors.  Only functions that call this are affected, never user code.
    Does nothing on CPUs without AVX-512 (LLVM then caps the width itself).
    """
    def codegen(context, builder, signature, args):
        attrs = builder.function.attributes
        set.add(attrs, '"prefer-vector-width"="512"')    # llvmlite's add() knows no string attributes
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def sub_exact(typingctx, a, b):
    """``a - b`` as an fsub that may neither reassociate nor contract with the operations
    around it.  KL needs (x - mx) - (z - mz) evaluated as written; with ``reassoc`` LLVM
    may regroup it as ((x - mx) + mz) - z, which at |z| ~ 1e4 rounds away the whole
    difference (a KL of 2e-7 came out as 1e-4); JS needs (x - max) - log s, which
    instcombine turns into x - (max + log s) (log p off by 2e-4 at x ~ 5e3).

    The fsub carries ``nsz`` alone: numba's fastmath pass adds the kernel's flags
    (reassoc, contract, ...) to every float instruction that has *no* flags, so a flagless
    fsub would get them all.  Without ``contract`` the backend does not fuse a product
    into it either (fma(x, sc, -m) would use the unrounded sc x).  Unlike
    ``llvm.arithmetic.fence`` (which the loop vectoriser does not handle: 0.49 vs 0.22
    ns/element) it vectorises."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        return builder.fsub(args[0], args[1], flags=("nsz",))

    return a(a, b), codegen


def _holds(context):
    """Whether held passes its constants through: only when the code is compiled for AVX-512
    (x86-64 with 32 vector registers; its asm constraint "x" is a float in a vector register).
    With AVX2's 16 the held float64 exp made the same loops spill more, not less (entropy:
    7 -> 24 stores per iteration, numba compiling for znver3); other machines are untested."""
    features = getattr(context.codegen(), "_tm_features", "") or ""
    return "+avx512f" in features.split(",")


def _constant_as(hold):
    """The intrinsic ``held`` (hold = True) or ``literal`` (False); see held."""

    @intrinsic
    def keep(typingctx, a):
        if not isinstance(a, types.Float):
            return None

        def codegen(context, builder, signature, args):
            if not hold or not _holds(context):
                return args[0]
            ty = args[0].type
            asm = ir.InlineAsm(ir.FunctionType(ty, [ty]), "", "=x,0", side_effect=False)
            return builder.call(asm, args, attrs=("readnone", "nounwind"))

        return a(a), codegen

    return keep


held = _constant_as(True)
held.__doc__ = """``held(c)``: the constant c as a value LLVM cannot fold: the same number, passed
through an empty inline asm without side effects, which LICM hoists out of the loops.

Choosing how many vector iterations a reducing loop runs at once (its interleave count),
LLVM's loop vectoriser budgets registers for the loop's invariant values but not for its
literal constants, and float64 exp_hot has 17.  Row loops that also keep several accumulators
(entropy's r and w, KL's sums) were interleaved 4 ways, and the register allocator stored loop
values to the stack in every iteration (float64 entropy: 7 64-byte stores per 32 elements).
What those stores cost depends on where the calling thread's stack lies: at 3-4 of every 256
stack positions (16 bytes apart) numba's two-thread float64 entropy ran 2.1x slower, which the
gate met as one process in about a hundred (benchmarks/NOTES.md, 2026-12-07).  Held, the
constants are counted: those loops interleave 1-2 ways and store nothing.  Only where the
code is compiled for AVX-512 (_holds): elsewhere held is literal.

The cost: a held value is hoisted out of *every* loop, so it stays live through a whole
kernel, loops that never use it included (see exp_held)."""
literal = _constant_as(False)
literal.__doc__ = """``literal(c)``: c itself (held's counterpart)."""


@intrinsic
def add_exact(typingctx, a, b):
    """``a + b`` as an fadd that may neither reassociate nor contract (see sub_exact)."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        return builder.fadd(args[0], args[1], flags=("nsz",))

    return a(a, b), codegen


@njit(fastmath=FASTMATH, inline="always", error_model="numpy")
def two_diff(a, b):
    """``(s, e)`` with ``s = fl(a - b)`` and ``a - b = s + e`` exactly (Knuth's TwoSum, finite
    a and b), every operation fenced against reassociation, which would fold e to 0."""
    s = sub_exact(a, b)
    bv = sub_exact(s, a)                   # -b, as rounded into s
    e = sub_exact(sub_exact(a, sub_exact(s, bv)), add_exact(b, bv))
    return s, e


@intrinsic
def fma(typingctx, a, b, c):
    """``llvm.fma`` (a * b + c, one rounding) as an explicit call: fast-math reassociation
    does not look through it, and it vectorises."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(fn, args)

    return a(a, b, c), codegen


@intrinsic
def _int_bits_to_float(typingctx, bits):
    """Reinterpret int32 bits as float32 or int64 bits as float64 (a register move)."""
    if bits == types.int32:
        out, llty = types.float32, ir.FloatType()
    elif bits == types.int64:
        out, llty = types.float64, ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llty)

    return out(bits), codegen


@intrinsic
def _float_bits_to_int(typingctx, x):
    """Reinterpret float32 as int32 bits or float64 as int64 bits."""
    if x == types.float32:
        out, llty = types.int32, ir.IntType(32)
    elif x == types.float64:
        out, llty = types.int64, ir.IntType(64)
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llty)

    return out(x), codegen


# ---------------------------------------------------------------------------------------
# exp(t).  t = k ln2 + r with k = round(t / ln2) and |r| <= ln2/2; e^r by a polynomial;
# 2^k by writing k into the exponent field.  t is clamped so that 2^k is a normal number,
# and the out-of-range results (0 below, inf above) are put back by selects.  Clamps and
# selects are written ``lo if t < lo else t`` so NaN (all comparisons false) passes through.
# ---------------------------------------------------------------------------------------

_LOG2E = 1.4426950408889634
_LN2_HI_F32 = np.float32(0.693359375)        # exactly representable: k * hi is exact
_LN2_LO_F32 = np.float32(-2.12194440e-4)
_LN2_HI_F64 = 0.6931471803691238              # 0x3FE62E42FEE00000
_LN2_LO_F64 = 1.9082149292705877e-10


@njit(fastmath=FASTMATH, error_model="numpy")
def exp_f32(t):
    """``exp`` for float32, max relative error about 2e-7 (Cephes expf polynomial).

    Results below the smallest normal float (t < -87.33) are flushed to 0: the kernels
    add them to sums that are >= 1, where they are far below one ulp.
    """
    tc = np.float32(-87.33) if t < np.float32(-87.33) else t
    tc = np.float32(88.72283) if tc > np.float32(88.72283) else tc
    k = np.floor(tc * np.float32(_LOG2E) + np.float32(0.5))
    k = np.float32(127.0) if k > np.float32(127.0) else k
    r = tc - k * _LN2_HI_F32 - k * _LN2_LO_F32
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    # numba widens int32 arithmetic to int64: cast back before reinterpreting the bits.
    two_k = _int_bits_to_float(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))
    y = p * two_k
    y = np.float32(0.0) if t < np.float32(-87.33) else y
    return np.float32(np.inf) if t > np.float32(88.72283) else y


@njit(fastmath=FASTMATH, error_model="numpy")
def exp_f64(t):
    """``exp`` for float64: Taylor polynomial to r^12 on |r| <= ln2/2, relative error ~2e-16.

    Results below the smallest normal double (t < -708.39) are flushed to 0.
    """
    tc = -708.39 if t < -708.39 else t
    tc = 709.782712893384 if tc > 709.782712893384 else tc
    k = np.floor(tc * _LOG2E + 0.5)
    k = 1023.0 if k > 1023.0 else k
    r = tc - k * _LN2_HI_F64 - k * _LN2_LO_F64
    p = 2.08767569878681e-09              # 1/12!
    p = p * r + 2.505210838544172e-08     # 1/11!
    p = p * r + 2.755731922398589e-07     # 1/10!
    p = p * r + 2.7557319223985893e-06    # 1/9!
    p = p * r + 2.48015873015873e-05      # 1/8!
    p = p * r + 1.984126984126984e-04     # 1/7!
    p = p * r + 1.388888888888889e-03     # 1/6!
    p = p * r + 8.333333333333333e-03     # 1/5!
    p = p * r + 4.1666666666666664e-02    # 1/4!
    p = p * r + 1.6666666666666666e-01    # 1/3!
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    two_k = _int_bits_to_float((np.int64(k) + np.int64(1023)) << np.int64(52))
    y = p * two_k
    y = 0.0 if t < -708.39 else y
    return np.inf if t > 709.782712893384 else y


# ---------------------------------------------------------------------------------------
# The hot-path exp of the kernels.  Its argument is ``t = x - max(row) <= 0`` after
# ``clamp_lo``, so no overflow handling is needed.  ``clamp_lo`` stops at a value whose
# power-of-two factor 2^k has k = -127 (float32) / -1023 (float64): its bit pattern is 0, so
# a masked logit (t = -inf) and anything below about 1e-38 (1e-308) give exactly 0, and the
# companion ``e * t`` is 0, never 0 * inf.  Kernels that need the sign of an exact 0 (KL:
# p = 0 must beat log q = -inf) select on ``t``.  NaN needs no care here: the row maximum is
# NaN-propagating and such rows are finished separately.  float32 uses a degree-5
# near-minimax polynomial (1.1e-7 relative, fitted on [-ln2/2, ln2/2] with weights for
# relative error) instead of Cephes' degree 7.  exp_hot(0) is exactly 1.
#
# ``exp_held`` is exp_hot with its float64 constants ``held``, for the row loops that spilled
# without it: row_state._sums (logsumexp, entropy, cross-entropy) and long_rows._kl_sums.
# It is not the default: held constants make the vectoriser interleave 1-2 ways, and loops
# with two exps and short trip counts then ran slower (numba's C51 float64 KL's flat loop
# 7-19 %, evaluate's and compare's row loops 5-12 %).  float32 holds none: its row loops never
# showed the 2x (their few stores cost at most 1.2x at a few stack positions), and held float32
# constants, live through whole kernels, moved spills into other loops (C51 float32 KL's flat
# loop: 0 -> 11 stores per iteration, 6-15 % slower).
# ---------------------------------------------------------------------------------------

LO_F32 = np.float32(-88.0)
LO_F64 = -709.0


#: k = round(t log2e) as fma(t, log2e, M) - M with M = 1.5 * 2^p (p = 23 / 52): the sum lands
#: in [2^p, 2^(p+1)), where the spacing is 1, so it is rounded to an integer and its low bits
#: are k itself: 2^k is those bits shifted into the exponent field (the bits of M shift out).
#: Two uops instead of round + convert.  The fmas are explicit llvm.fma calls: reassociation
#: would fold ``(t log2e + M) - M`` back into ``t log2e``, and distribute ``t - (y - M) ln2``
#: into ``t - y ln2 + M ln2``, which rounds away r entirely.
_ROUND_F32 = np.float32(12582912.0)
_ROUND_F64 = 6755399441055744.0


@njit(fastmath=FASTMATH, error_model="numpy")
def exp_hot_f32(t):
    y = fma(t, np.float32(_LOG2E), _ROUND_F32)
    k = y - _ROUND_F32
    r = fma(k, np.float32(-0.6931471805599453), t)  # one rounding: 2e-7 at |k| = 127
    p = np.float32(0.008312524296343327)             # Horner: five fma
    p = p * r + np.float32(0.041890114545822144)
    p = p * r + np.float32(0.16667114198207855)
    p = p * r + np.float32(0.499992311000824)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    two_k = np.int32(np.int32(_float_bits_to_int(y) << np.int32(23)) + np.int32(127 << 23))
    return p * _int_bits_to_float(two_k)


def _exp_hot_f64_with(keep):
    """exp_hot (keep = literal) or exp_held (held) in float64."""

    @njit(fastmath=FASTMATH, error_model="numpy")
    def exp_f64(t):
        big = keep(_ROUND_F64)
        y = fma(t, keep(_LOG2E), big)
        k = y - big
        r = fma(k, keep(-_LN2_LO_F64), fma(k, keep(-_LN2_HI_F64), t))   # Cody-Waite: k * hi is exact
        p = keep(2.08767569878681e-09)
        p = p * r + keep(2.505210838544172e-08)
        p = p * r + keep(2.755731922398589e-07)
        p = p * r + keep(2.7557319223985893e-06)
        p = p * r + keep(2.48015873015873e-05)
        p = p * r + keep(1.984126984126984e-04)
        p = p * r + keep(1.388888888888889e-03)
        p = p * r + keep(8.333333333333333e-03)
        p = p * r + keep(4.1666666666666664e-02)
        p = p * r + keep(1.6666666666666666e-01)
        p = p * r + keep(0.5)
        p = p * r + keep(1.0)
        p = p * r + keep(1.0)
        return p * _int_bits_to_float((_float_bits_to_int(y) << np.int64(52)) + np.int64(1023 << 52))

    return exp_f64


exp_hot_f64, exp_held_f64 = _exp_hot_f64_with(literal), _exp_hot_f64_with(held)


# ---------------------------------------------------------------------------------------
# log(x).  x = 2^e * m with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(f), f = (m-1)/(m+1),
# |f| <= 0.1716, by its odd series.  Denormals are first scaled into the normal range;
# x = 0 -> -inf, x < 0 -> NaN, +inf -> +inf, NaN -> NaN are applied by selects at the end.
# ---------------------------------------------------------------------------------------

_LN2 = 0.6931471805599453
_SQRT2 = 1.4142135623730951


@njit(fastmath=FASTMATH, inline="always", error_model="numpy")
def log_f32(x):
    """``log`` for float32, max relative error about 3e-7 away from x = 1 (abs 1e-7 near it)."""
    tiny = x < np.float32(1.1754944e-38)
    xs = x * np.float32(8388608.0) if tiny else x          # * 2^23
    bits = _float_bits_to_int(xs)
    e = np.int32(((bits >> np.int32(23)) & np.int32(0xFF)) - np.int32(127))
    m = _int_bits_to_float(np.int32((bits & np.int32(0x7FFFFF)) | np.int32(0x3F800000)))
    big = m > np.float32(_SQRT2)
    m = m * np.float32(0.5) if big else m
    e = np.int32(e + np.int32(1)) if big else e
    e = np.int32(e - np.int32(23)) if tiny else e
    f = (m - np.float32(1.0)) / (m + np.float32(1.0))
    f2 = f * f
    s = np.float32(1.0 / 11.0)
    s = s * f2 + np.float32(1.0 / 9.0)
    s = s * f2 + np.float32(1.0 / 7.0)
    s = s * f2 + np.float32(1.0 / 5.0)
    s = s * f2 + np.float32(1.0 / 3.0)
    s = s * f2 + np.float32(1.0)
    y = np.float32(2.0) * f * s + np.float32(e) * np.float32(_LN2)
    y = -np.inf if x == np.float32(0.0) else y
    y = np.inf if x == np.inf else y
    return np.float32(np.nan) if not (x >= np.float32(0.0)) else y


@njit(fastmath=FASTMATH, inline="always", error_model="numpy")
def log_f64(x):
    """``log`` for float64, relative error about 2e-16."""
    tiny = x < 2.2250738585072014e-308
    xs = x * 4503599627370496.0 if tiny else x             # * 2^52
    bits = _float_bits_to_int(xs)
    e = ((bits >> np.int64(52)) & np.int64(0x7FF)) - np.int64(1023)
    m = _int_bits_to_float((bits & np.int64(0xFFFFFFFFFFFFF)) | np.int64(0x3FF0000000000000))
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + np.int64(1) if big else e
    e = e - np.int64(52) if tiny else e
    f = (m - 1.0) / (m + 1.0)
    f2 = f * f
    s = 1.0 / 25.0
    s = s * f2 + 1.0 / 23.0
    s = s * f2 + 1.0 / 21.0
    s = s * f2 + 1.0 / 19.0
    s = s * f2 + 1.0 / 17.0
    s = s * f2 + 1.0 / 15.0
    s = s * f2 + 1.0 / 13.0
    s = s * f2 + 1.0 / 11.0
    s = s * f2 + 1.0 / 9.0
    s = s * f2 + 1.0 / 7.0
    s = s * f2 + 1.0 / 5.0
    s = s * f2 + 1.0 / 3.0
    s = s * f2 + 1.0
    y = 2.0 * f * s + np.float64(e) * _LN2
    y = -np.inf if x == 0.0 else y
    y = np.inf if x == np.inf else y
    return np.nan if not (x >= 0.0) else y


@njit(fastmath=FASTMATH, inline="always", error_model="numpy")
def log_parts_f64(x):
    """``log x`` of a float64 ``x > 0`` (normal) as ``(hi, lo)``: ``hi = e ln2_hi`` exact (ln2_hi
    has 32 significant bits, e 11), ``lo = e ln2_lo + log m`` small, m in (sqrt(1/2), sqrt(2)].
    ``(r + hi) + lo`` then rounds ``r + log x`` about once, where ``r + log x`` would add the
    rounding of a large log x (``r`` far below the result: a shared reference)."""
    m, e = _mant_exp_f64(x)
    f = (m - 1.0) / (m + 1.0)
    f2 = f * f
    s = 1.0 / 25.0
    s = s * f2 + 1.0 / 23.0
    s = s * f2 + 1.0 / 21.0
    s = s * f2 + 1.0 / 19.0
    s = s * f2 + 1.0 / 17.0
    s = s * f2 + 1.0 / 15.0
    s = s * f2 + 1.0 / 13.0
    s = s * f2 + 1.0 / 11.0
    s = s * f2 + 1.0 / 9.0
    s = s * f2 + 1.0 / 7.0
    s = s * f2 + 1.0 / 5.0
    s = s * f2 + 1.0 / 3.0
    s = s * f2 + 1.0
    ef = np.float64(e)
    return ef * _LN2_HI_F64, fma(ef, _LN2_LO_F64, 2.0 * f * s)


# ---------------------------------------------------------------------------------------
# log(p / q) for p, q > 0, without forming p / q (which overflows or underflows for far-apart
# p and q) and without subtracting log p - log q (which cancels for nearly equal p and q: a
# KL term p log(p/q) of 1e-14 came out with 1e-3 relative error).  With p = 2^ep mp and
# q = 2^eq mq, the mantissas in (sqrt(1/2), sqrt(2)] as in log_f32 / log_f64 and then one of
# them halved or doubled so that mp / mq lies in [sqrt(1/2), sqrt(2)]:
#     log(p / q) = (ep - eq) ln2 + 2 atanh(f),   f = (mp - mq) / (mp + mq),  |f| <= 0.1716,
# the series of log_f32 / log_f64.  mp - mq is exact (Sterbenz: their ratio is within [1/2, 2]),
# so f carries two roundings and log(p / q) a few ulp of itself; when ep != eq the two terms
# do not cancel (|(ep - eq) ln2| >= ln2 > 2 |atanh(f)|).  p or q zero, infinite, negative or
# NaN: finite garbage (the caller selects the term's value for those).
# ---------------------------------------------------------------------------------------


@njit(fastmath=FASTMATH, inline="always", error_model="numpy")
def _mant_exp_f32(x):
    tiny = x < np.float32(1.1754944e-38)
    xs = x * np.float32(8388608.0) if tiny else x          # * 2^23
    bits = _float_bits_to_int(xs)
    e = np.int32(((bits >> np.int32(23)) & np.int32(0xFF)) - np.int32(127))
    m = _int_bits_to_float(np.int32((bits & np.int32(0x7FFFFF)) | np.int32(0x3F800000)))
    big = m > np.float32(_SQRT2)
    m = m * np.float32(0.5) if big else m
    e = np.int32(e + np.int32(1)) if big else e
    e = np.int32(e - np.int32(23)) if tiny else e
    return m, e


@njit(fastmath=FASTMATH, inline="always", error_model="numpy")
def _mant_exp_f64(x):
    tiny = x < 2.2250738585072014e-308
    xs = x * 4503599627370496.0 if tiny else x             # * 2^52
    bits = _float_bits_to_int(xs)
    e = ((bits >> np.int64(52)) & np.int64(0x7FF)) - np.int64(1023)
    m = _int_bits_to_float((bits & np.int64(0xFFFFFFFFFFFFF)) | np.int64(0x3FF0000000000000))
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + np.int64(1) if big else e
    e = e - np.int64(52) if tiny else e
    return m, e


@njit(fastmath=FASTMATH, inline="always", error_model="numpy")
def log_ratio_f32(p, q):
    """``log(p / q)`` for float32 p, q > 0 (see above): a few ulp of the result."""
    mp, ep = _mant_exp_f32(p)
    mq, eq = _mant_exp_f32(q)
    e = np.float32(np.int32(ep - eq))
    hi = mp > np.float32(_SQRT2) * mq            # (one select each: nested ones made a branch)
    lo = mq > np.float32(_SQRT2) * mp
    mp = mp * np.float32(0.5) if hi else mp
    e = e + np.float32(1.0) if hi else e
    mp = mp * np.float32(2.0) if lo else mp
    e = e - np.float32(1.0) if lo else e
    f = sub_exact(mp, mq) / (mp + mq)
    f2 = f * f
    s = np.float32(1.0 / 11.0)
    s = s * f2 + np.float32(1.0 / 9.0)
    s = s * f2 + np.float32(1.0 / 7.0)
    s = s * f2 + np.float32(1.0 / 5.0)
    s = s * f2 + np.float32(1.0 / 3.0)
    s = s * f2 + np.float32(1.0)
    return np.float32(2.0) * f * s + e * np.float32(_LN2)


@njit(fastmath=FASTMATH, inline="always", error_model="numpy")
def log_ratio_f64(p, q):
    """``log(p / q)`` for float64 p, q > 0 (see above): a few ulp of the result."""
    mp, ep = _mant_exp_f64(p)
    mq, eq = _mant_exp_f64(q)
    e = np.float64(ep - eq)
    hi = mp > _SQRT2 * mq
    lo = mq > _SQRT2 * mp
    mp = mp * 0.5 if hi else mp
    e = e + 1.0 if hi else e
    mp = mp * 2.0 if lo else mp
    e = e - 1.0 if lo else e
    f = sub_exact(mp, mq) / (mp + mq)
    f2 = f * f
    s = 1.0 / 25.0
    s = s * f2 + 1.0 / 23.0
    s = s * f2 + 1.0 / 21.0
    s = s * f2 + 1.0 / 19.0
    s = s * f2 + 1.0 / 17.0
    s = s * f2 + 1.0 / 15.0
    s = s * f2 + 1.0 / 13.0
    s = s * f2 + 1.0 / 11.0
    s = s * f2 + 1.0 / 9.0
    s = s * f2 + 1.0 / 7.0
    s = s * f2 + 1.0 / 5.0
    s = s * f2 + 1.0 / 3.0
    s = s * f2 + 1.0
    return 2.0 * f * s + e * _LN2


# Type-dispatching names used by the kernels: the overload picks the float32 or float64
# implementation at compile time from the argument type.

def fexp(t):  # pragma: no cover - replaced by the overload inside jitted code
    return math.exp(t)


def flog(x):  # pragma: no cover
    return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)


@overload(fexp, fastmath=FASTMATH)
def _ov_fexp(t):
    if t == types.float32:
        return lambda t: exp_f32(t)
    if t == types.float64:
        return lambda t: exp_f64(t)
    return None


@overload(flog, fastmath=FASTMATH)
def _ov_flog(x):
    if x == types.float32:
        return lambda x: log_f32(x)
    if x == types.float64:
        return lambda x: log_f64(x)
    return None


def flogratio(p, q):  # pragma: no cover
    return math.log(p) - math.log(q)


@overload(flogratio, fastmath=FASTMATH)
def _ov_flogratio(p, q):
    if p == types.float32 and q == types.float32:
        return lambda p, q: log_ratio_f32(p, q)
    if p == types.float64 and q == types.float64:
        return lambda p, q: log_ratio_f64(p, q)
    return None


def rel_entr(p, q):  # pragma: no cover
    return p * (math.log(p) - math.log(q))


@overload(rel_entr, fastmath=FASTMATH, inline="always")   # a call kept the float64 loop scalar
def _ov_rel_entr(p, q):
    """One term ``p log(p / q)`` of a KL from probabilities, with ``scipy.special.rel_entr``'s
    rules for p and q that are not NaN: 0 where ``p = 0 <= q``; ``+inf`` where p or q is negative
    (outside the domain) or ``p > 0 = q``; ``p = +inf`` gives +inf, ``q = +inf`` -inf (both: NaN).
    A NaN in p or q is the caller's to add (``nan_of``): a final select on it kept the loop
    scalar (11 vs 0.7 ns per term), as do conditions joined with and / or (branches).  NaN p
    with q > 0, or NaN q with p > 0, already gives NaN here."""
    if isinstance(p, types.Float) and p == q:
        def impl(p, q):
            zero = cast(0.0, p)
            inf = cast(np.inf, p)
            lr = flogratio(p, q)
            lr = inf if p == inf else lr
            lr = -inf if q == inf else lr
            lr = cast(np.nan, p) if ((p == inf) & (q == inf)) else lr
            spec = zero if p == zero else inf              # p = 0: 0 unless q < 0
            spec = inf if q < zero else spec
            return spec if ((p <= zero) | (q <= zero)) else p * lr
        return impl
    return None


def nan_of(p, q):  # pragma: no cover
    return p + q if (p != p or q != q) else 0.0


@overload(nan_of, fastmath=FASTMATH)
def _ov_nan_of(p, q):
    """NaN where p or q is NaN, else 0: added to a sum, it poisons it (see rel_entr)."""
    if isinstance(p, types.Float) and p == q:
        return lambda p, q: (p + q) if ((p != p) | (q != q)) else cast(0.0, p)
    return None


def clamp_lo(t):  # pragma: no cover
    return max(t, -87.33)


def exp_hot(t):  # pragma: no cover
    return math.exp(t)


def exp_held(t):  # pragma: no cover
    return math.exp(t)


@njit(fastmath=FASTMATH, error_model="numpy")
def _clamp_lo_f32(t):
    if t < LO_F32:
        return LO_F32
    return t


@njit(fastmath=FASTMATH, error_model="numpy")
def _clamp_lo_f64(t):
    if t < LO_F64:
        return LO_F64
    return t


@overload(clamp_lo, fastmath=FASTMATH)
def _ov_clamp_lo(t):
    if t == types.float32:
        return lambda t: _clamp_lo_f32(t)
    if t == types.float64:
        return lambda t: _clamp_lo_f64(t)
    return None


@overload(exp_hot, fastmath=FASTMATH)
def _ov_exp_hot(t):
    if t == types.float32:
        return lambda t: exp_hot_f32(t)
    if t == types.float64:
        return lambda t: exp_hot_f64(t)
    return None


@overload(exp_held, fastmath=FASTMATH)
def _ov_exp_held(t):
    if t == types.float32:
        return lambda t: exp_hot_f32(t)
    if t == types.float64:
        return lambda t: exp_held_f64(t)
    return None


def cast(c, like):  # pragma: no cover
    return type(like)(c)


@overload(cast)
def _ov_cast(c, like):
    """``c`` converted to the float type of ``like``: numba would otherwise promote
    ``float32 op python-float`` to float64 and silently widen a float32 accumulator."""
    if like == types.float32:
        return lambda c, like: np.float32(c)
    if like == types.float64:
        return lambda c, like: np.float64(c)
    return None


def is_f64(like):  # pragma: no cover - replaced by the overload inside jitted code
    return isinstance(like, (float, np.float64))


@overload(is_f64)
def _ov_is_f64(like):
    """Whether ``like`` is a float64: a compile-time constant, so a branch on it costs nothing."""
    flag = like == types.float64
    return lambda like: flag


def scale_of(scale, like):  # pragma: no cover - replaced by the overload inside jitted code
    return 1.0 if scale is None else scale


@overload(scale_of)
def _ov_scale_of(scale, like):
    """A kernel's logit scale (1 / temperature) in the type of ``like``; ``None`` means 1 and
    is a compile-time constant, so the common unscaled call multiplies by nothing (a run-time
    1.0 costs a multiply per element: ~5 % of the KL loop)."""
    if isinstance(scale, types.NoneType):
        return lambda scale, like: cast(1.0, like)
    return lambda scale, like: cast(scale, like)


def jump_limit(like):  # pragma: no cover
    return 60.0


@overload(jump_limit)
def _ov_jump_limit(like):
    """How far a chunk's maximum may exceed a stale reference before its exp-sums must be
    redone: e^60 * CHUNK stays far below float32's 3e38 (e^600 below float64's 1.8e308)."""
    if like == types.float32:
        return lambda like: np.float32(60.0)
    if like == types.float64:
        return lambda like: np.float64(600.0)
    return None


# ---------------------------------------------------------------------------------------
# Half-precision inputs (kernel contract: float16 arrives as uint16 bits, bfloat16 as int16
# bits).  Both widen to float32 exactly: float16 by LLVM's ``fpext half`` (vcvtph2ps on x86),
# bfloat16 by putting its 16 bits on top of an empty float32 mantissa.
# ---------------------------------------------------------------------------------------


@intrinsic
def _f16_bits_to_f32(typingctx, bits):
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _bf16_bits_to_f32(typingctx, bits):
    if bits != types.int16:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        wide = builder.shl(builder.zext(args[0], i32), ir.Constant(i32, 16))
        return builder.bitcast(wide, ir.FloatType())

    return types.float32(bits), codegen


def load(v):  # pragma: no cover - replaced by the overload inside jitted code
    return v


@overload(load)
def _ov_load(v):
    """An input element as the float type the kernels compute in (float32 for half bits)."""
    if isinstance(v, types.Float):
        return lambda v: v
    if v == types.uint16:
        return lambda v: _f16_bits_to_f32(v)
    if v == types.int16:
        return lambda v: _bf16_bits_to_f32(v)
    return None
