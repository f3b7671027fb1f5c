"""Build fastsamp._C: the C++ CPU kernels, plus the CUDA kernels when nvcc is found.

Environment switches:
  FASTSAMP_PORTABLE=1     no -march=native (a wheel that runs on any x86-64 / arm64)
  FASTSAMP_NO_CUDA=1      skip the CUDA kernels even if nvcc is on the PATH
  FASTSAMP_CUDA_ARCHS     semicolon list of SM versions, default "80;90"
  FASTSAMP_NVCC           path to nvcc (default: $CUDA_HOME/bin/nvcc or nvcc on PATH)
  FASTSAMP_BUILD_JOBS     C++ sources compiled at once (default: one per core)
"""
import glob
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pybind11
from pybind11.setup_helpers import ParallelCompile
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

# setuptools compiles an extension's sources one at a time; pybind11's helper makes that one per core (every
# source compiled on every build: no stale object when only a header changed)
ParallelCompile("FASTSAMP_BUILD_JOBS").install()

ROOT = os.path.dirname(os.path.abspath(__file__))
PORTABLE = os.environ.get("FASTSAMP_PORTABLE", "0") == "1"


def find_nvcc():
    if os.environ.get("FASTSAMP_NO_CUDA", "0") == "1":
        return None
    cand = os.environ.get("FASTSAMP_NVCC")
    if not cand and os.environ.get("CUDA_HOME"):
        cand = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
    cand = cand or shutil.which("nvcc")
    return os.path.realpath(cand) if cand and os.path.exists(cand) else None


def cuda_library_dirs(nvcc):
    """Folders holding libcudart_static.a: $CUDA_HOME, the toolkit nvcc belongs to (nvcc may be a
    wrapper script elsewhere, so also ask nvcc itself), /usr/local/cuda."""
    roots = [os.environ.get("CUDA_HOME", ""), os.path.dirname(os.path.dirname(nvcc)), "/usr/local/cuda"]
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True)
        roots += [line.split("TOP=", 1)[1].strip() for line in out.stderr.splitlines() if "TOP=" in line]
    except OSError:
        pass
    dirs = []
    for root in filter(None, roots):
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            d = os.path.join(root, sub)
            if os.path.exists(os.path.join(d, "libcudart_static.a")) and d not in dirs:
                dirs.append(d)
    if not dirs:
        raise RuntimeError(f"nvcc found at {nvcc} but not libcudart_static.a; set CUDA_HOME or FASTSAMP_NO_CUDA=1")
    return dirs


# Programs that run the compiler named after them (CXX="ccache g++"): not the compiler to record.
COMPILER_LAUNCHERS = ("ccache", "sccache", "distcc", "icecc")


def real_compiler(command):
    """The compiler of a compiler command line: its first word that is not a launcher ("ccache g++ -O2" -> g++)."""
    return next(w for w in command if os.path.basename(w) not in COMPILER_LAUNCHERS)


def cxx_flags():
    # -fopenmp-simd: the `omp simd` loop pragmas only. Threads come from the kernels' own pool
    # (csrc/cpu/runtime.cpp), so _C links no OpenMP runtime (none to share or fight with torch's).
    flags = ["-O3", "-std=c++17", "-fopenmp-simd", "-fno-math-errno", "-fvisibility=hidden", "-pthread"]
    if not PORTABLE:
        flags.append("-march=native")
        if platform.machine().lower() in ("x86_64", "amd64"):
            # the `omp simd` reductions' order follows the vector width: GCC's Zen 4 tuning picks 512 bits where
            # its Xeon tunings pick 256, so the same source summed in another order and score_mh_accept's row
            # lanes (intrinsics in the 256-bit order) no longer gave the row form's bits; pinned to 256 bits, every
            # AVX-512 machine builds the same order
            flags.append("-mprefer-vector-width=256")
    return flags


class BuildExt(build_ext):
    """Compile csrc/cuda/*.cu with nvcc into objects linked into fastsamp._C."""

    def build_extension(self, ext):
        nvcc = find_nvcc()
        cu_sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
        if nvcc and cu_sources:
            archs = os.environ.get("FASTSAMP_CUDA_ARCHS", "80;90").split(";")
            gencode = []
            for a in archs:
                gencode += [f"-gencode=arch=compute_{a},code=sm_{a}"]
            gencode += [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
            objdir = os.path.join(self.build_temp, "cuda")
            os.makedirs(objdir, exist_ok=True)
            jobs = []
            for src in cu_sources:
                obj = os.path.join(objdir, os.path.basename(src) + ".o")
                jobs.append((obj, [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-lineinfo",
                                   "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
                                   "-I" + os.path.join(ROOT, "csrc")] + gencode))
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # nvcc runs are independent
                for _ in pool.map(lambda job: (print(" ".join(job[1]), flush=True), subprocess.check_call(job[1])),
                                  jobs):
                    pass
            objects = [obj for obj, _ in jobs]
            libdirs = cuda_library_dirs(nvcc)
            ext.extra_objects += objects
            ext.library_dirs += [d for d in libdirs if os.path.isdir(d)]
            ext.libraries += ["cudart_static", "dl", "rt", "pthread"]
            ext.define_macros += [("FASTSAMP_WITH_CUDA", "1")]
            ext.sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
            self._fastsamp_cuda = " ".join(gencode)
        else:
            why = "FASTSAMP_NO_CUDA=1" if os.environ.get("FASTSAMP_NO_CUDA") == "1" else "nvcc not found"
            print(f"fastsamp: building without CUDA kernels ({why})", file=sys.stderr)
            self._fastsamp_cuda = ""
        flags = " ".join(cxx_flags())
        ext.define_macros += [("FASTSAMP_CXX", f'"{real_compiler(self.compiler.compiler_so_cxx)}"'),  # the C++ compiler
                              ("FASTSAMP_CXX_FLAGS", f'"{flags}"'),
                              ("FASTSAMP_CUDA_FLAGS", f'"{self._fastsamp_cuda}"')]
        super().build_extension(ext)


ext = Extension(
    "fastsamp._C",
    sources=sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp"))),
    include_dirs=[pybind11.get_include(), os.path.join(ROOT, "csrc")],
    # the headers too: a build whose .so is newer than every .cpp is otherwise skipped after a header-only change
    depends=sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)
                   + glob.glob(os.path.join("csrc", "**", "*.cuh"), recursive=True)
                   + glob.glob(os.path.join("csrc", "cuda", "*.cu"))),
    extra_compile_args=cxx_flags(),
    extra_link_args=["-pthread"],
    language="c++",
)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
    # every subpackage of fastsamp/, plus the Triton kernels, which live in kernels/ and install as fastsamp.kernels
    package_dir={"fastsamp": "fastsamp", "fastsamp.kernels": "kernels"},
    packages=find_packages(include=["fastsamp", "fastsamp.*"])
    + ["fastsamp.kernels"] + [f"fastsamp.kernels.{p}" for p in find_packages("kernels")],
)
