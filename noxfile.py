"""nox sessions: tests, lint, bench, cuda_build. CPU machines pin the CPU build of torch."""
import os

import nox

TORCH_CPU = os.environ.get("FASTSAMP_TORCH", "torch==2.13.0")
nox.options.sessions = ["lint", "tests"]


def _install(session, *extra):
    session.install(TORCH_CPU, "numpy", "pybind11>=2.12", "setuptools>=77", "wheel", *extra)
    session.install("--no-build-isolation", "-e", ".")


@nox.session
def tests(session):
    _install(session, "pytest", "pytest-xdist>=3", "hypothesis>=6", "triton>=3.0", "pot>=0.9", "tqdm>=4",
             "scikit-learn>=1.3", "scipy>=1.9", "matplotlib>=3.5")
    session.run("python", "-m", "pytest", *(session.posargs or ["-n", "auto"]))


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", "fastsamp", "kernels", "tests", "benchmarks", "noxfile.py", "setup.py")


@nox.session
def bench(session):
    _install(session, "triton>=3.0", "pot>=0.9", "tqdm>=4", "matplotlib>=3.5")
    session.run("fastsamp", "bench", "--json", "bench.json", *session.posargs)


@nox.session
def cuda_build(session):
    """Compile the CUDA kernels with nvcc (a compile check on machines without a GPU)."""
    session.install("pybind11>=2.12", "setuptools>=77", "wheel")
    session.run("python", "setup.py", "build_ext", "--inplace", "--force",
                env={"FASTSAMP_NVCC": os.environ.get("FASTSAMP_NVCC", "nvcc")})
    session.run("python", "-c", "import fastsamp._C as C; assert C.has_cuda, 'built without CUDA';"
                " print('CUDA kernels compiled:', [n for n in dir(C) if n.startswith('cuda_')])")
