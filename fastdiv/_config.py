"""``fastdiv.show_config()``: versions, backends, OpenMP, SIMD width and threads."""
from __future__ import annotations

import platform
import sys

from . import _blas, _registry, api


def _simd():
    """The widest vector ISA the host CPU offers, as LLVM (numba's compiler) sees it."""
    try:
        from llvmlite import binding as llvm

        feats = llvm.get_host_cpu_features()
        cpu = llvm.get_host_cpu_name()
        for name, width in (("avx512f", 512), ("avx2", 256), ("avx", 256), ("sse2", 128), ("neon", 128)):
            if feats.get(name, False):
                return f"{name} ({width}-bit vectors), cpu={cpu}"
        if platform.machine().lower() in ("aarch64", "arm64"):
            # AArch64 has Advanced SIMD in its base ISA (LLVM's generic aarch64 target
            # vectorises with it); LLVM lists no features where /proc/cpuinfo has none,
            # e.g. under qemu-user, which shows the host's.
            return f"neon (128-bit vectors, aarch64 baseline), cpu={cpu}"
        return f"scalar, cpu={cpu}"
    except Exception as exc:  # llvmlite missing or unusual platform
        return f"unknown ({exc})"


def config():
    """The facts ``show_config`` prints, as a dict (used by tests and the CLI)."""
    import numpy

    info = {
        "fastdiv": __import__("fastdiv").__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "simd": _simd(),
        "threads": api.get_num_threads(),
        "backends": {},
    }
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    for backend in _registry.BACKENDS:
        why = _registry.unavailable_reason(backend)
        info["backends"][backend] = "available" if why is None else f"unavailable: {why}"
    module, _ = _registry._load("cython")
    if module is not None:
        info["cython_openmp"] = bool(module.OPENMP)
        info["cython_flags"] = module.SIMD_FLAGS
        info["cython_isa"] = module.SIMD_ISA
        info["cython_isa_level"] = getattr(module, "ISA_LEVEL", None)
        info["cython_isa_levels"] = list(getattr(module, "ISA_LEVELS", ()))
        info["cython_dispatch"] = bool(getattr(module, "DISPATCH", False))
        info["cython_isa_requested"] = getattr(module, "ISA_REQUESTED", "")
        info["cython_max_threads"] = module.max_threads()
    module, _ = _registry._load("numba")
    if module is not None:
        info["numba_max_threads"] = module.max_threads()
    info["linear"] = _blas.describe()
    return info


def _isa_line(info):
    """Which ISA level of the Cython kernels runs, and how it was chosen."""
    level, flags = info["cython_isa_level"], info["cython_flags"] or "no -march"
    if info["cython_dispatch"]:
        forced = info["cython_isa_requested"]
        how = f"FASTDIV_ISA={forced}" if forced else "the highest this CPU supports"
        return (f"ISA dispatch: running {level} ({info['cython_isa']}, {flags}; {how}) of "
                f"{', '.join(info['cython_isa_levels'])}")
    return f"no ISA dispatch: one level, {level} ({info['cython_isa']}, {flags})"


def _auto_exceptions():
    """The ops for which ``auto`` picks another CPU backend on this CPU (measured), if any."""
    rules = {op: b for op, b in _registry._auto_rules().items() if _registry.unavailable_reason(b) is None}
    if not rules:
        return ""
    ops = ", ".join(f"{b} for {op}" for op, b in sorted(rules.items()))
    return f"; {ops} on float32 inputs of {_registry.AUTO_FROM_BYTES >> 20} MiB or more (measured on this CPU)"


def show_config() -> None:
    """Print versions, which backends are available (and why not), OpenMP, SIMD and threads.

    Examples
    --------
    >>> import fastdiv
    >>> fastdiv.show_config()                          # doctest: +ELLIPSIS
    fastdiv ...
      backends:
    ...
    """
    info = config()
    print(f"fastdiv {info['fastdiv']}  (python {info['python']}, {info['platform']})")
    print(f"  numpy {info['numpy']}, numba {info['numba']}")
    print(f"  SIMD: {info['simd']}")
    print(f"  threads: {info['threads']} (fastdiv.set_num_threads; numba may use up to "
          f"{info.get('numba_max_threads', '-')}, OpenMP up to {info.get('cython_max_threads', '-')})")
    if "cython_openmp" in info:
        omp = "yes" if info["cython_openmp"] else "NO (the cython backend runs single-threaded)"
        print(f"  cython: OpenMP {omp}; {_isa_line(info)}")
    print("  backends:")
    for backend, state in info["backends"].items():
        print(f"    {backend:7s} {state}")
    print(f"  auto picks: {_registry.resolve('auto')} for host arrays{_auto_exceptions()}")
    print(f"  fastdiv.linear: {info['linear']}")
