"""Build of the Cython/OpenMP extension ``fastdiv._cython._kernels`` (metadata: pyproject.toml).

Environment switches (read at build time):

``FASTDIV_PORTABLE=1``
    Do not compile with ``-march=native``.  The default tunes the kernels for the CPU doing
    the build (AVX-512 / AVX2 where present), which is right for ``pip install .`` on the
    machine that will run it but wrong for a wheel meant for other machines: set this to
    build a wheel that runs on any CPU of the target architecture (baseline ISA only).
``FASTDIV_REQUIRE_OPENMP=1``
    Fail the build when the compiler cannot compile and link OpenMP code (``-fopenmp``),
    instead of building a single-threaded extension with a warning.

The result is recorded in the module: ``fastdiv._cython._kernels.OPENMP`` (bool),
``SIMD_FLAGS`` (the architecture flags used) and ``SIMD_ISA`` (what the compiler targeted).

Floating-point flags: only the subset of -ffast-math that vectorisation needs
(no errno, no traps, reassociation, no signed zeros, FMA contraction).  Never
-ffinite-math-only / -ffast-math: masked logits are -inf and NaN must propagate; and
fast-math stays off the link line (it can link crtfastmath.o, which turns on
flush-to-zero for the whole process).
"""
import os
import shutil
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

        arch = []
        if not _env_on("FASTDIV_PORTABLE"):
            if _compiles(compiler, SIMD_TEST, ["-march=native"], []):
                arch = ["-march=native"]
            else:
                print("fastdiv: the compiler rejects -march=native; building for the baseline ISA",
                      file=sys.stderr)

        openmp = _compiles(compiler, OPENMP_TEST, ["-fopenmp"], ["-fopenmp"])
        if not openmp:
            why = "fastdiv: the C compiler cannot compile and link OpenMP code (-fopenmp failed)"
            fix = "install an OpenMP runtime (libgomp for gcc, libomp for clang)"
            if _env_on("FASTDIV_REQUIRE_OPENMP"):
                raise RuntimeError(f"{why} and FASTDIV_REQUIRE_OPENMP=1 is set: {fix}.")
            print(f"WARNING: {why}; the Cython backend will run single-threaded.  To fix, {fix};"
                  " set FASTDIV_REQUIRE_OPENMP=1 to make this an error.", file=sys.stderr)

        simd_flags = " ".join(arch)
        for ext in self.extensions:
            ext.extra_compile_args = ["-O3"] + arch + FP_FLAGS + (["-fopenmp"] if openmp else [])
            ext.extra_link_args = ["-fopenmp"] if openmp else []
            # Recorded in the module as SIMD_FLAGS (an argv element: no shell quoting involved).
            ext.define_macros = list(ext.define_macros or []) + [
                ("FD_SIMD_FLAGS", '"%s"' % simd_flags),
                ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
            ]
        print(f"fastdiv: building the Cython backend with OpenMP={openmp}, "
              f"SIMD flags={simd_flags or '(portable)'}", file=sys.stderr)
        super().build_extensions()


def _extensions():
    from Cython.Build import cythonize

    ext = Extension(
        "fastdiv._cython._kernels",
        sources=["fastdiv/_cython/_kernels.pyx"],
        include_dirs=[numpy.get_include(), "fastdiv/_cython"],
        depends=["fastdiv/_cython/_simd.h", "fastdiv/_cython/_rows.h", "fastdiv/_cython/_eval.h",
                 "fastdiv/_cython/_eval_rows.h", "fastdiv/_cython/_div.h", "fastdiv/_cython/_div_rows.h",
                 "fastdiv/_cython/_inst.h"],
        libraries=["m"] if os.name == "posix" else [],
    )
    return cythonize([ext], compiler_directives={"language_level": "3"})


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
