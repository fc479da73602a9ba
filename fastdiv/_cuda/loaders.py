"""Input kinds: how the kernels read each input dtype.

A kind names an input dtype -- ``f32``, ``f64``, ``f16``, and ``bf16`` (bfloat16 handed over as
its raw bits in a uint16 / int16 array) -- and gives its accumulation type (float32; float64
for float64 input), its vector width ``vw`` (values per 16 bytes: 4, 2, 8, 8) and two loaders:
``sload(a, i)``, element ``i`` widened to the accumulation type, and ``vload(a, i)``, the
``vw`` values of one 16-byte ``ld.global.nc`` load at a 16-byte aligned element ``i``.
Widening is exact: float16 through ``cvt.f32.f16``, bfloat16 by shifting its bits into the
top half of a float32.
"""
from __future__ import annotations

import numpy as np
from numba import float32, int64

from . import intrinsics as D
from .intrinsics import inline as _dj


class Kind:
    """How to read one input dtype: accumulation type, vector width and the loaders."""

    def __init__(self, name):
        self.name = name
        self.acc = np.float64 if name == "f64" else np.float32
        self.vw = {"f32": 4, "f64": 2, "f16": 8, "bf16": 8}[name]
        self.sload, self.vload = _LOADERS[name]()


def _loaders_f32():
    bits = D.bits_to_f32
    ld = D.ld16_u32x4

    @_dj
    def sload(a, i):
        return a[i]

    @_dj
    def vload(a, i):
        w = ld(a, i)
        return (bits(w[0]), bits(w[1]), bits(w[2]), bits(w[3]))

    return sload, vload


def _loaders_f64():
    ld = D.ld16_f64x2

    @_dj
    def sload(a, i):
        return a[i]

    @_dj
    def vload(a, i):
        return ld(a, i)

    return sload, vload


def _loaders_f16():
    ld = D.ld16_u32x4
    hp = D.half_pair

    @_dj
    def sload(a, i):
        return float32(a[i])

    @_dj
    def vload(a, i):
        w = ld(a, i)
        h0 = hp(w[0])
        h1 = hp(w[1])
        h2 = hp(w[2])
        h3 = hp(w[3])
        return (h0[0], h0[1], h1[0], h1[1], h2[0], h2[1], h3[0], h3[1])

    return sload, vload


def _loaders_bf16():
    ld = D.ld16_u32x4
    bits = D.bits_to_f32

    @_dj
    def sload(a, i):
        return bits((int64(a[i]) & 0xFFFF) << 16)

    @_dj
    def vload(a, i):
        w = ld(a, i)
        return (
            bits(int64(w[0]) << 16), bits(int64(w[0]) & 0xFFFF0000),
            bits(int64(w[1]) << 16), bits(int64(w[1]) & 0xFFFF0000),
            bits(int64(w[2]) << 16), bits(int64(w[2]) & 0xFFFF0000),
            bits(int64(w[3]) << 16), bits(int64(w[3]) & 0xFFFF0000),
        )

    return sload, vload


_LOADERS = {"f32": _loaders_f32, "f64": _loaders_f64, "f16": _loaders_f16, "bf16": _loaders_bf16}
