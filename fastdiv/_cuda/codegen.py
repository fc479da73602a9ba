"""Generated device functions: the unrolled chunk updates and their compilation.

A chunk of values held in registers (one 16-byte vector, or several) is folded into an
accumulator state by a function generated as source and compiled here, fully unrolled:
LLVM does not always unroll a loop over a tuple, and a tuple indexed at run time compiles to
a switch per element.  ``gen_chunk`` writes the update of ``accumulators.py``'s ``pre`` (the
chunk's maxima first, one rescale per chunk), ``refs`` and one ``elem`` per value;
``gen_maxv`` the NaN-ignoring max of a tuple.  ``compile_source`` registers every generated
source with ``linecache`` so that tracebacks show it; the launch shapes generate their own
loops (``long_rows.gen_accumulate``, ``short_rows.gen_copy_tile``) through it.
"""
from __future__ import annotations

import linecache

from . import intrinsics as D
from .intrinsics import inline as _dj


_gen_count = [0]


def compile_source(src, ns, fname):
    """Compile generated source (registered with linecache so tracebacks show it)."""
    _gen_count[0] += 1
    filename = f"<fastdiv-cuda-gen-{_gen_count[0]}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    exec(compile(src, filename, "exec"), ns)
    return _dj(ns[fname])


def gen_maxv(n, NEG_INF):
    """``maxv(v)``: NaN-ignoring max of an ``n``-tuple, written out (no loop, no indexing)."""
    body = ["def maxv(v):", "    c = fmax(NEG_INF, v[0])"]
    body += [f"    c = fmax(c, v[{k}])" for k in range(1, n)]
    body.append("    return c")
    return compile_source("\n".join(body) + "\n", {"fmax": D.fmax, "NEG_INF": NEG_INF}, "maxv")


def gen_chunk(op, n):
    """``chunk(st, xv, zv, wgt, j0, js, jend, p0, p1)`` folding ``n`` values, unrolled.

    Value ``k`` sits in column ``j0 + k * js``.  (A ``for k in range(len(xv))`` loop over a
    tuple is not always unrolled by LLVM; indexing a tuple with a run-time ``k`` then
    compiles to a switch per element.)
    """
    lines = ["def chunk(st, xv, zv, wgt, j0, js, jend, p0, p1):"]
    if op.NMAX >= 1:
        lines.append("    cx = maxx(xv)")
    else:
        lines.append("    cx = NEG_INF")
    lines.append("    cz = maxz(zv)" if op.NMAX == 2 else "    cz = NEG_INF")
    lines.append("    st = pre(st, cx, cz)")
    lines.append("    r = refs(st)")
    for k in range(n):
        col = "j0" if k == 0 else f"j0 + {k} * js"
        lines.append(f"    st = elem(st, r, xv[{k}], zv[{k}], {col}, wgt, jend, p0, p1)")
    lines.append("    return st")
    mx = gen_maxv(n, op.NEG_INF)
    ns = {"maxx": mx, "maxz": mx, "pre": op.pre, "refs": op.refs, "elem": op.elem, "NEG_INF": op.NEG_INF}
    return compile_source("\n".join(lines) + "\n", ns, "chunk")

