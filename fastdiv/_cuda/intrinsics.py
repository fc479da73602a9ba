"""Device primitives for the CUDA kernels, each with a real-GPU form and a simulator twin.

On a GPU these are LLVM intrinsics / inline PTX (16-byte ``ld.global.nc`` vector loads,
``ex2.approx``, ``lg2.approx``, bit casts, ``shfl.sync``).  Under ``NUMBA_ENABLE_CUDASIM=1``
the same names are plain Python functions with the same results (up to rounding), so the
kernels run unchanged in the simulator.  ``inline`` makes the kernels' own device functions
(forced inline on a GPU, plain Python in the simulator).

Only imported when numba-cuda is installed (``kernels.py`` imports it lazily).
"""
from __future__ import annotations

import math
import threading

import numpy as np
from numba import cuda

# Which numba.cuda was imported (the simulator's or the real one): numba reads
# NUMBA_ENABLE_CUDASIM when numba itself is first imported, so the variable alone can lie.
SIM = "simulator" in (getattr(cuda.to_device, "__module__", "") or "")

F32_LOG2E = np.float32(1.4426950408889634)
F32_LN2 = np.float32(0.6931471805599453)


def inline(fn):
    """``fn`` as a device function inlined into its callers; in the simulator ``fn`` itself
    (the simulator's device-function wrapper is slow)."""
    if SIM:
        return fn
    return cuda.jit(device=True, forceinline=True)(fn)


__all__ = [
    "SIM",
    "inline",
    "fmax",
    "fmin",
    "exp_f32",
    "exp_f64",
    "log_any",
    "log_f32",
    "bits_to_f32",
    "ld16_u32x4",
    "ld16_f64x2",
    "half_pair",
    "shfl_xor",
]


if SIM:  # ------------------------------------------------------------------ simulator twins

    # (numpy may warn about overflow / invalid values here: callers filter RuntimeWarning;
    # numpy's errstate is per thread and every simulated CUDA thread is a Python thread)
    def exp_f32(t):
        return np.exp(np.float32(t))

    def log_f32(p):
        return np.log(np.float32(p))

    def fmax(a, b):
        """max ignoring NaN (PTX ``max``): the other operand when one is NaN."""
        return b if (a != a or b > a) else a

    def fmin(a, b):
        return b if (a != a or b < a) else a

    def exp_f64(t):
        return np.exp(np.float64(t))

    def log_any(x):
        return np.log(x)

    def bits_to_f32(u):
        return np.array([int(u) & 0xFFFFFFFF], dtype=np.uint32).view(np.float32)[0]

    def _raw_words(arr, i, nwords):
        a = np.asarray(arr)  # FakeCUDAArray forwards __array__ to its ndarray
        i = int(i)
        nb = a.dtype.itemsize
        assert (i * nb) % 16 == 0, "misaligned vector load"
        raw = a[i : i + (4 * nwords) // nb].view(np.uint32)
        assert raw.size == nwords, "vector load ran past the end of the array"
        return raw

    def ld16_u32x4(arr, i):
        w = _raw_words(arr, i, 4)
        return (w[0], w[1], w[2], w[3])

    def ld16_f64x2(arr, i):
        a = np.asarray(arr)
        i = int(i)
        assert i % 2 == 0, "misaligned vector load"
        assert i + 2 <= a.size, "vector load ran past the end of the array"
        return (np.float64(a[i]), np.float64(a[i + 1]))

    def half_pair(w):
        h = np.array([int(w) & 0xFFFFFFFF], dtype=np.uint32).view(np.float16)
        return (np.float32(h[0]), np.float32(h[1]))

    _shfl_lock = threading.Lock()

    def shfl_xor(v, offset):
        """Warp ``shfl.xor`` emulated with a per-warp barrier (every lane of the warp calls it).

        A per-warp ``threading.Barrier`` rather than the block barrier, so that warps
        that wait in ``syncthreads`` are not released early by a shuffle in another warp.
        """
        t = threading.current_thread()
        mgr = t._manager
        tid = t.thread_id
        warp = tid // 32
        with _shfl_lock:
            reg = mgr.__dict__.setdefault("_fastdiv_warps", {})
            ent = reg.get(warp)
            if ent is None:
                nthreads = int(np.prod(mgr._block_dim))
                ent = (threading.Barrier(min(32, nthreads - 32 * warp)), {})
                reg[warp] = ent
        bar, store = ent
        store[tid] = v
        bar.wait()
        other = store[tid ^ int(offset)]
        bar.wait()
        return other

else:  # ----------------------------------------------------------------------------- GPU
    from llvmlite import ir
    from numba import types
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    try:
        from numba.cuda.cache_hints import _get_element_pointer
    except ImportError:  # pragma: no cover - very old numba-cuda
        _get_element_pointer = None

    def _elem_ptr(context, builder, aty, ity, arr, idx):
        if _get_element_pointer is not None:
            return _get_element_pointer(context, builder, ity, idx, aty, arr)
        ary = context.make_array(aty)(context, builder, value=arr)  # pragma: no cover
        return cgutils.get_item_pointer(context, builder, aty, ary, [idx], wraparound=False)

    @intrinsic
    def ld16_u32x4(typingctx, array, index):
        """16-byte ``ld.global.nc.v4.u32`` at element ``index`` (must be 16-byte aligned)."""
        sig = types.UniTuple(types.uint32, 4)(array, index)

        def codegen(context, builder, sig, args):
            aty, ity = sig.args
            ptr = _elem_ptr(context, builder, aty, ity, args[0], args[1])
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.LiteralStructType([i32] * 4), [ptr.type])
            asm = ir.InlineAsm(fnty, "ld.global.nc.v4.u32 {$0, $1, $2, $3}, [$4];", "=r,=r,=r,=r,l")
            res = builder.call(asm, [ptr])
            return cgutils.pack_array(builder, [builder.extract_value(res, k) for k in range(4)])

        return sig, codegen

    @intrinsic
    def ld16_f64x2(typingctx, array, index):
        """16-byte ``ld.global.nc.v2.f64`` at element ``index`` (must be 16-byte aligned)."""
        sig = types.UniTuple(types.float64, 2)(array, index)

        def codegen(context, builder, sig, args):
            aty, ity = sig.args
            ptr = _elem_ptr(context, builder, aty, ity, args[0], args[1])
            f64 = ir.DoubleType()
            fnty = ir.FunctionType(ir.LiteralStructType([f64] * 2), [ptr.type])
            asm = ir.InlineAsm(fnty, "ld.global.nc.v2.f64 {$0, $1}, [$2];", "=d,=d,l")
            res = builder.call(asm, [ptr])
            return cgutils.pack_array(builder, [builder.extract_value(res, k) for k in range(2)])

        return sig, codegen

    @intrinsic
    def bits_to_f32(typingctx, u):
        """Reinterpret the low 32 bits of an integer as a float32."""
        if not isinstance(u, types.Integer):
            return None
        sig = types.float32(u)

        def codegen(context, builder, sig, args):
            v = args[0]
            if v.type.width > 32:
                v = builder.trunc(v, ir.IntType(32))
            elif v.type.width < 32:
                v = builder.zext(v, ir.IntType(32))
            return builder.bitcast(v, ir.FloatType())

        return sig, codegen

    @intrinsic
    def half_pair(typingctx, w):
        """Two IEEE halves packed in a 32-bit word -> (low, high) as float32."""
        if not isinstance(w, types.Integer):
            return None
        sig = types.UniTuple(types.float32, 2)(w)

        def codegen(context, builder, sig, args):
            v = args[0]
            if v.type.width > 32:
                v = builder.trunc(v, ir.IntType(32))
            elif v.type.width < 32:
                v = builder.zext(v, ir.IntType(32))
            f32 = ir.FloatType()
            fnty = ir.FunctionType(ir.LiteralStructType([f32, f32]), [ir.IntType(32)])
            asm = ir.InlineAsm(
                fnty,
                "{.reg .b16 lo, hi;\n\tmov.b32 {lo, hi}, $2;\n\tcvt.f32.f16 $0, lo;\n\tcvt.f32.f16 $1, hi;}",
                "=f,=f,r",
            )
            res = builder.call(asm, [v])
            return cgutils.pack_array(builder, [builder.extract_value(res, k) for k in range(2)])

        return sig, codegen

    @intrinsic
    def _ex2(typingctx, x):
        sig = types.float32(types.float32)

        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(ir.FloatType(), [ir.FloatType()])
            asm = ir.InlineAsm(fnty, "ex2.approx.ftz.f32 $0, $1;", "=f,f")
            return builder.call(asm, [args[0]])

        return sig, codegen

    @intrinsic
    def _lg2(typingctx, x):
        sig = types.float32(types.float32)

        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(ir.FloatType(), [ir.FloatType()])
            # no .ftz: subnormal probabilities keep their logarithm
            asm = ir.InlineAsm(fnty, "lg2.approx.f32 $0, $1;", "=f,f")
            return builder.call(asm, [args[0]])

        return sig, codegen

    @cuda.jit(device=True, forceinline=True)
    def exp_f32(t):
        # exp(t) = 2^(t log2 e): one multiply and one MUFU.EX2 (relative error ~2^-21).
        return _ex2(t * F32_LOG2E)

    @cuda.jit(device=True, forceinline=True)
    def log_f32(p):
        return _lg2(p) * F32_LN2

    def _minmax(opname):
        @intrinsic
        def impl(typingctx, a, b):
            if not (isinstance(a, types.Float) and a == b and a.bitwidth in (32, 64)):
                return None
            sig = a(a, b)

            def codegen(context, builder, sig, args):
                bw = sig.args[0].bitwidth
                fty = ir.FloatType() if bw == 32 else ir.DoubleType()
                c = "f" if bw == 32 else "d"
                fnty = ir.FunctionType(fty, [fty, fty])
                asm = ir.InlineAsm(fnty, f"{opname}.f{bw} $0, $1, $2;", f"={c},{c},{c}")
                return builder.call(asm, list(args))

            return sig, codegen

        return impl

    fmax = _minmax("max")  # NaN-ignoring, as PTX max.f32 / max.f64
    fmin = _minmax("min")

    @cuda.jit(device=True, forceinline=True)
    def exp_f64(t):
        return math.exp(t)

    @cuda.jit(device=True, forceinline=True)
    def log_any(x):
        return math.log(x)

    @cuda.jit(device=True, forceinline=True)
    def shfl_xor(v, offset):
        return cuda.shfl_xor_sync(0xFFFFFFFF, v, offset)


