"""Build of the Cython/OpenMP extension ``fastdiv._cython._kernels`` (metadata: pyproject.toml).

The C kernels (``fastdiv/_cython/_simd.h`` and the headers it includes) are compiled once per
instruction-set level from ``fastdiv/_cython/_level.c``, each level an object file with its own
``-march`` flags, and linked into the one extension, which picks the highest level the CPU
supports at import (issue 21; ``_dispatch.h``).  By default, on x86-64, the levels are
``x86-64`` (baseline, SSE2), ``x86-64-v2`` (SSE4.2), ``x86-64-v3`` (AVX2, FMA) and
``x86-64-v4`` (AVX-512 F/BW/DQ/VL): a wheel built anywhere runs on every x86-64 CPU, at full
speed on AVX2 and AVX-512 ones.  Elsewhere (aarch64, ...), or with a compiler that does not know
the x86-64-vN names, one level for the target's baseline ISA is built, with no dispatch.
``FASTDIV_ISA=<level>`` at run time caps the level (see ``_kernels.pyx``).

Environment switches (read at build time):

``FASTDIV_NATIVE=1``
    One level compiled with ``-march=native`` (no dispatch): tuned for the CPU doing the build,
    wrong for a wheel meant for other machines.  The dispatch build's top level is as fast on
    the CPUs it targets (measured on an AMD EPYC Zen 4: within noise of ``-march=native``).
``FASTDIV_PORTABLE=1``
    One level for the compiler's default target (the baseline ISA, no ``-march``), no
    dispatch: the smallest build, and the slowest (5x slower than AVX-512 for log-sum-exp).
``FASTDIV_REQUIRE_OPENMP=1``
    Fail the build when the compiler cannot compile and link OpenMP code (``-fopenmp``),
    instead of building a single-threaded extension with a warning.

The result is recorded in the module: ``fastdiv._cython._kernels.OPENMP`` (bool),
``DISPATCH`` (bool), ``ISA_LEVELS`` (the levels built), ``ISA_LEVEL`` (the one running),
``SIMD_FLAGS`` (its architecture flags) and ``SIMD_ISA`` (what the compiler targeted for it).

Floating-point flags: only the subset of -ffast-math that vectorisation needs
(no errno, no traps, reassociation, no signed zeros, FMA contraction).  Never
-ffinite-math-only / -ffast-math: masked logits are -inf and NaN must propagate; and
fast-math stays off the link line (it can link crtfastmath.o, which turns on
flush-to-zero for the whole process).
"""
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
import sys
import tempfile
import textwrap

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FP_FLAGS = [
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-ffp-contract=fast",
]

OPENMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d %d\\n", n, omp_get_max_threads());
        return 0;
    }
    """
)

SIMD_TEST = "int main(void) { return 0; }\n"

# The dispatch build's levels, lowest first: (symbol suffix, name, architecture flags).  The
# order and suffixes are those of fd_tables in fastdiv/_cython/_dispatch.h.
X86_LEVELS = [
    ("x86_64", "x86-64", ["-march=x86-64"]),
    ("x86_64_v2", "x86-64-v2", ["-march=x86-64-v2"]),
    ("x86_64_v3", "x86-64-v3", ["-march=x86-64-v3"]),
    ("x86_64_v4", "x86-64-v4", ["-march=x86-64-v4"]),
]

# Whether the target is x86-64 and the compiler can dispatch on it (-march=x86-64-vN: GCC >= 11,
# Clang >= 12; __builtin_cpu_supports).
DISPATCH_TEST = textwrap.dedent(
    """
    #if !defined(__x86_64__)
    #error "not x86-64"
    #endif
    int main(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") ? 0 : 1;
    }
    """
)

LEVEL_SOURCE = "fastdiv/_cython/_level.c"

# What _simd.h needs from the compiler: vector extensions with __builtin_shufflevector and
# __builtin_convertvector (GCC >= 12, Clang).
VECTOR_TEST = textwrap.dedent(
    """
    typedef float vf __attribute__((vector_size(16)));
    typedef int vi __attribute__((vector_size(16)));
    int main(void) {
        vf a = {1, 2, 3, 4};
        vf b = __builtin_shufflevector(a, a, 3, 2, 1, 0);
        vi c = __builtin_convertvector(a + b, vi);
        return c[0] == 5 ? 0 : 1;
    }
    """
)


def _env_on(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compiles(compiler, source, compile_args, link_args):
    """Whether `compiler` (a distutils CCompiler) compiles and links `source` with these flags."""
    tmp = tempfile.mkdtemp(prefix="fastdiv-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        # Quiet: a failed probe is an expected outcome, not an error to show.
        devnull = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(2)
        os.dup2(devnull, 2)
        try:
            objects = compiler.compile([src], output_dir=tmp, extra_postargs=compile_args)
            compiler.link_executable(
                objects, "probe", output_dir=tmp, extra_postargs=link_args
            )
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        compiler = self.compiler
        if compiler.compiler_type == "msvc":
            raise RuntimeError(
                "fastdiv's Cython backend needs GCC or Clang (it uses GCC vector extensions); "
                "MSVC is not supported"
            )

        if not _compiles(compiler, VECTOR_TEST, [], []):
            raise RuntimeError(
                "fastdiv's Cython backend needs a C compiler with GCC vector extensions and "
                "__builtin_shufflevector / __builtin_convertvector: GCC >= 12 or Clang"
            )

        native, portable = _env_on("FASTDIV_NATIVE"), _env_on("FASTDIV_PORTABLE")
        if native and portable:
            raise RuntimeError("set at most one of FASTDIV_NATIVE=1 and FASTDIV_PORTABLE=1")
        if native:
            if _compiles(compiler, SIMD_TEST, ["-march=native"], []):
                self.levels = [("one", "native", ["-march=native"])]
            else:
                print("fastdiv: the compiler rejects -march=native; building for the baseline ISA",
                      file=sys.stderr)
                self.levels = [("one", "baseline", [])]
        elif not portable and _compiles(compiler, DISPATCH_TEST, X86_LEVELS[-1][2], []):
            self.levels = X86_LEVELS
        else:
            self.levels = [("one", "baseline", [])]
        dispatch = len(self.levels) > 1

        openmp = _compiles(compiler, OPENMP_TEST, ["-fopenmp"], ["-fopenmp"])
        if not openmp:
            why = "fastdiv: the C compiler cannot compile and link OpenMP code (-fopenmp failed)"
            fix = "install an OpenMP runtime (libgomp for gcc, libomp for clang)"
            if _env_on("FASTDIV_REQUIRE_OPENMP"):
                raise RuntimeError(f"{why} and FASTDIV_REQUIRE_OPENMP=1 is set: {fix}.")
            print(f"WARNING: {why}; the Cython backend will run single-threaded.  To fix, {fix};"
                  " set FASTDIV_REQUIRE_OPENMP=1 to make this an error.", file=sys.stderr)

        self.omp = ["-fopenmp"] if openmp else []
        for ext in self.extensions:
            # The extension's own code (the Cython module, _dispatch.h) is compiled for the
            # baseline ISA: it runs before the level is chosen.
            ext.extra_compile_args = ["-O3"] + FP_FLAGS + self.omp
            ext.extra_link_args = list(self.omp)
            ext.define_macros = list(ext.define_macros or []) + [
                ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
            ] + ([("FD_DISPATCH", "1")] if dispatch else [])
        print(f"fastdiv: building the Cython backend with OpenMP={openmp}, ISA levels: "
              + ", ".join(f"{name} ({' '.join(flags) or 'no -march'})" for _, name, flags in self.levels)
              + (" (run-time dispatch)" if dispatch else ""), file=sys.stderr)
        super().build_extensions()

    def build_extension(self, ext):
        """Compile _level.c once per ISA level and link the objects into `ext`.  The levels
        compile in worker threads while this thread compiles the extension's own source (the
        Cython module, ~1/3 of the compile time): the link waits for them."""
        if not (self.force or _newer_group(list(ext.sources) + list(ext.depends),
                                           self.get_ext_fullpath(ext.name))):
            super().build_extension(ext)
            return

        def compile_level(level):
            suffix, name, flags = level
            # Recorded in the module as SIMD_FLAGS (argv elements: no shell quoting involved).
            macros = [("FD_LEVEL", suffix), ("FD_LEVEL_NAME", '"%s"' % name),
                      ("FD_SIMD_FLAGS", '"%s"' % " ".join(flags))]
            return self.compiler.compile(
                [LEVEL_SOURCE], output_dir=os.path.join(self.build_temp, "level_" + name),
                macros=macros, include_dirs=ext.include_dirs, depends=ext.depends,
                extra_postargs=["-O3"] + flags + FP_FLAGS + self.omp)

        link = self.compiler.link_shared_object

        def link_with_levels(objects, *args, **kwargs):
            return link(list(objects) + [o for f in levels for o in f.result()], *args, **kwargs)

        with ThreadPoolExecutor(max_workers=min(len(self.levels), os.cpu_count() or 1)) as pool:
            levels = [pool.submit(compile_level, level) for level in self.levels]
            self.compiler.link_shared_object = link_with_levels
            try:
                super().build_extension(ext)
            finally:
                self.compiler.link_shared_object = link


def _newer_group(sources, target):
    """Whether any of `sources` is newer than `target` (or `target` is missing)."""
    if not os.path.exists(target):
        return True
    mtime = os.path.getmtime(target)
    return any(not os.path.exists(s) or os.path.getmtime(s) > mtime for s in sources)


def _extensions():
    from Cython.Build import cythonize

    ext = Extension(
        "fastdiv._cython._kernels",
        sources=["fastdiv/_cython/_kernels.pyx"],
        include_dirs=[numpy.get_include(), "fastdiv/_cython"],
        depends=[LEVEL_SOURCE] + [
            f"fastdiv/_cython/{h}.h" for h in (
                "_simd", "_row_state", "_long_rows", "_short_rows", "_row_items", "_evaluate",
                "_evaluate_rows", "_divergences", "_divergence_rows", "_softcap_rows", "_inst", "_job",
                "_dispatch")],
        libraries=["m"] if os.name == "posix" else [],
    )
    return cythonize([ext], compiler_directives={"language_level": "3"})


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
