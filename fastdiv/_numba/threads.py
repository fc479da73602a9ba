"""Threads for the numba kernels: each row kernel is compiled serial, and a thin parallel
entry (``*_mt`` in the kernel modules) runs it over contiguous shares of the rows.

Why two functions per kernel: numba's parfor lowering of a whole kernel (``parallel=True`` on
the row loop, with every inlined helper inside it) made each specialization 2-3x as costly to
compile as the serial kernel (float32, Zen 4, 2026-12-05, first call in a fresh process:
entropy 4.6 s parallel vs 2.3 s serial, KL from logits 8.4 vs 2.5 s).  The entry's parfor holds
one call, through a pointer (below), so it compiles in 0.4-0.5 s, and it keeps numba's own
thread pool, whose launch costs a few microseconds (a Python thread pool's hand-off cost
30-75 us per call, 20 % of a 2 MiB in-cache call on two threads).

A row's result does not depend on the split: the block kernels (V <= SMALL_V) get shares that
start on their block boundaries (``align``), so their blocks hold the same rows as in one call.

Nor may it depend on which copy of the serial kernel's machine code runs.  A parallel entry
that calls the serial kernel by name gets a second copy of it: numba links the serial
kernel's optimised module into the entry's and optimises it again, with fast-math
reassociation, so the copy may round differently.  Which copy a call runs follows what the
process loaded first: a process that compiles the entry has the serial kernel loaded already
and calls it; one that loads the entry from numba's cache first calls the entry's own copy.
numba's float32 ``js_div`` on two shares gave 8 of 75 rows an ulp away from one share that
way (V = 1271, Zen 4, 2026-12-08).  ``Entry`` and ``call`` run the one copy instead: the
entry is handed the serial kernel's compiled address and calls it through a pointer, and
compiles in 0.4-0.5 s instead of 1.3-3.1 s (lse, KL, JS, float32, Zen 4, 2026-12-08).

What this does not cover: a serial kernel's own calls to helpers numba compiles apart
(``_js_mixed_terms``, ``_kl_near32`` and its kin, ``_kls_again``) still go to whichever copy
the process loaded first.  ``tests/equivalence.py`` found every numba case bit-identical
between a compiling and a cached process (7887 cases, 2026-12-08), so none of them rounds
differently today; a change to one of them should be checked the same way.
"""
from __future__ import annotations

import operator
import threading
from functools import lru_cache

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.core.registry import cpu_target
from numba.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox

#: the parallel entries: a prange over shares, each one call of a serial kernel
PAR = dict(parallel=True, cache=True, nogil=True)

#: Elements per share below which a split costs more than it saves: a parallel launch
#: (the omp layer, threads warm) costs ~3 us, the kernels ~0.3 ns per element and thread.
#: 24576 gained 12-26 % at 50000-65000 elements against 32768 (Zen 4, 2026-12-07); it waited
#: until numba's js_div gave the same bits on one share and on two (2026-12-08: ``Entry``).
MIN_SHARE = 24576


@njit(inline="always")
def share(n, k, parts, align):
    """Rows [lo, hi) of share k of ``parts``, its start a multiple of ``align``."""
    blocks = (n + align - 1) // align
    lo = min(n, (blocks * k // parts) * align)
    hi = min(n, (blocks * (k + 1) // parts) * align)
    return lo, hi


def parts(x, nthreads, align=1, work=1):
    """How many shares to split ``x``'s rows into on ``nthreads`` threads; ``work``: a kernel's
    cost per element against logsumexp's (a share needs MIN_SHARE / work elements)."""
    blocks = -(-x.shape[0] // align)
    return max(1, min(int(nthreads), blocks, x.size * work // MIN_SHARE))


_LOCK = threading.Lock()
_SAFE = []          # [whether the threading layer takes calls from several Python threads], once known


def _safe():
    """numba's ``omp`` and ``tbb`` threading layers accept parallel calls from several Python
    threads at once; its fallback ``workqueue`` layer does not (it aborts the process), so
    there the calls are serialised.  The layer is only known after the first launch."""
    if not _SAFE:
        try:
            _SAFE.append(numba.threading_layer() != "workqueue")
        except ValueError:              # nothing launched yet
            return False
    return _SAFE[0]


def launch(k, parallel, *args):
    """``parallel(*args)``, a parallel entry, on ``k`` of numba's threads (numba's setting is
    per calling thread).  A plain function, not a context manager: the launch's Python cost
    is ~1.5 us of a C51 call's ~15 (a context manager added 1)."""
    numba.set_num_threads(max(1, min(int(k), numba.config.NUMBA_NUM_THREADS)))
    if _safe():
        parallel(*args)
    else:
        with _LOCK:
            parallel(*args)


def run(serial, parallel, kinds, nthreads, args, x, align=1, work=1):
    """``serial(*args)`` on one share, else ``parallel(e, *args, shares, align)`` on numba's
    threads, ``e`` serial's ``Entry`` (``split``; ``kinds`` says what a share gets of each
    argument): the split rule of every numba kernel.  ``x`` sizes the split: the input rows,
    or the per-row output where a kernel's work is a few elements per row; ``work`` as in
    ``parts``."""
    k = parts(x, nthreads, align, work)
    if k == 1:
        serial(*args)
        return
    split(k, parallel, serial, kinds, *args, align=align)


def split(k, parallel, serial, kinds, *args, align=1):
    """``parallel(e, *args, k, align)`` on ``k`` threads, ``e`` the ``Entry`` of ``serial`` that
    its shares call: ``kinds[i]`` says what a share passes of ``args[i]``, ``r`` its rows
    ``a[lo:hi]``, ``k`` its own ``a[k]``, ``=`` the argument itself."""
    key = (serial, kinds, *map(_key, args))
    hit = _SPLITS.get(key)
    if hit is None:
        e = entry_for(serial, kinds, *args)
        hit = _SPLITS[key] = e, native(parallel, e, *args, k, align)
    e, run = hit
    launch(k, run, e, *args, k, align)


_SPLITS = {}


def entry_for(serial, kinds, *args):
    """The ``Entry`` of ``serial`` for a share of ``args`` (``kinds`` as in ``split``), looked up
    by the arguments' ``_key``."""
    key = (serial, kinds, *map(_key, args))
    e = _SHARE_ENTRIES.get(key)
    if e is None:
        e = _SHARE_ENTRIES[key] = entry(serial, *map(_share_type, kinds, args))
    return e


_SHARE_ENTRIES = {}


def native(kernel, *args):
    """``kernel``'s compiled entry point for arguments like ``args``: called directly, it skips
    the dispatcher's typing of each argument (it types an ``Entry`` in Python, 2.5 us)."""
    key = (kernel, *map(_key, args))
    run = _NATIVE.get(key)
    if run is None:
        run = _NATIVE[key] = kernel.compile(tuple(numba.typeof(a) for a in args))
    return run


_NATIVE = {}


def _key(a):
    """What numba's type of ``a`` depends on, read in one or two attribute lookups (numba.typeof
    costs ~1 us an argument)."""
    if isinstance(a, np.ndarray):
        return a.dtype, a.ndim, a.flags.num
    if isinstance(a, Entry):
        return a.sig
    if type(a) is int:                      # numba types a Python int by its size
        return int, -(1 << 63) <= a < (1 << 63)
    return type(a)


def _share_type(kind, a):
    t = numba.typeof(a)
    return rows(t) if kind == "r" else item(t) if kind == "k" else t


def max_threads():
    """Threads numba may use in this process (``NUMBA_NUM_THREADS``)."""
    return numba.config.NUMBA_NUM_THREADS


class Entry:
    """The compiled code of one serial kernel for one signature: its address, passed to a
    compiled caller that runs it by ``call`` (see the module's docstring)."""
    __slots__ = ("addr", "sig")

    def __init__(self, kernel, sig):
        kernel.compile(sig)                  # compiled, or loaded from numba's cache
        cres = kernel.overloads[sig]
        self.addr = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        self.sig = sig
        if not self.addr:
            raise RuntimeError(f"no compiled code for {kernel.__name__}{sig}")


class EntryType(types.Type):
    """numba's type of an ``Entry``: the signature it was compiled for, so that a call with
    other argument types fails to compile instead of running with the wrong layout."""

    def __init__(self, sig):
        self.sig = sig
        super().__init__(name=f"Entry({', '.join(map(str, sig))})")


@typeof_impl.register(Entry)
def _typeof_entry(val, c):
    return EntryType(val.sig)


@register_model(EntryType)
class _EntryModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.IntType(64))


@unbox(EntryType)
def _unbox_entry(typ, obj, c):
    addr = c.pyapi.object_getattr_string(obj, "addr")
    val = c.pyapi.long_as_longlong(addr)
    c.pyapi.decref(addr)
    return NativeValue(val, is_error=c.pyapi.c_api_error())


@intrinsic
def call(typingctx, entry, args):
    """``entry``'s kernel on the tuple ``args``: a call through its address, numba's own
    calling convention, the kernel's result (None) and status dropped (kernels do not raise)."""
    if not isinstance(entry, EntryType) or not isinstance(args, types.BaseTuple):
        return None
    if tuple(args.types) != entry.sig:
        raise TypingError(f"an entry compiled for {entry.sig} called with {tuple(args.types)}")

    def codegen(context, builder, signature, llargs):
        vals = cgutils.unpack_tuple(builder, llargs[1], len(entry.sig))
        fnty = context.call_conv.get_function_type(types.none, entry.sig)
        fn = builder.inttoptr(llargs[0], fnty.as_pointer())
        context.call_conv.call_function(builder, fn, types.none, entry.sig, vals)
        return context.get_dummy_value()
    return types.none(entry, args), codegen


_ENTRIES = {}


def entry(kernel, *sig):
    """The ``Entry`` of ``kernel`` for the numba types ``sig``, built once per process."""
    e = _ENTRIES.get((kernel, sig))
    if e is None:
        e = _ENTRIES[kernel, sig] = Entry(kernel, sig)
    return e


def _typing():
    ctx = cpu_target.typing_context
    ctx.refresh()
    return ctx


@lru_cache(maxsize=None)
def _getitem(t, index):
    return _typing().resolve_function_type(operator.getitem, (t, index), {}).return_type


def rows(t):
    """numba's type of ``a[lo:hi]`` for an array of numba type ``t``."""
    return _getitem(t, types.slice2_type)


def item(t):
    """numba's type of ``a[k]`` for an array of numba type ``t``."""
    return _getitem(t, types.intp)
