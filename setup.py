"""Builds bdh_kernels._C: the C++ ops always, the CUDA ops when a CUDA build of torch and nvcc exist.

BDH_KERNELS_BUILD_CUDA=1 forces the CUDA build (and fails clearly if it cannot), =0 skips it.
TORCH_CUDA_ARCH_LIST picks the GPU architectures (torch's default otherwise).
"""
import glob
import os

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError as e:
    raise SystemExit(
        "bdh-kernels compiles against the torch that will run it, and none is installed here.\n"
        "Install torch first, e.g. `pip install torch==2.13.0`, then `pip install -e .`."
    ) from e


def want_cuda() -> bool:
    flag = os.environ.get("BDH_KERNELS_BUILD_CUDA")
    found = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag == "1" and not found:
        raise SystemExit(
            "BDH_KERNELS_BUILD_CUDA=1 but "
            + ("this torch is a CPU build" if torch.version.cuda is None else "nvcc / CUDA_HOME was not found")
        )
    return found if flag is None else flag == "1"


# No FMA contraction, so spikes match the reference bit for bit; no trapping math, so the selects of
# the neuron loops can be if-converted and vectorised (results are unchanged: this is not fast-math).
cxx_flags = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno", "-fopenmp"]
sources = sorted(glob.glob("csrc/*.cpp"))
if want_cuda():
    ext = cpp_extension.CUDAExtension(
        "bdh_kernels._C",
        sources + sorted(glob.glob("csrc/*.cu")),
        define_macros=[("BDH_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--fmad=false"]},
        extra_link_args=["-fopenmp"],
    )
else:
    ext = cpp_extension.CppExtension(
        "bdh_kernels._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"]
    )

setup(ext_modules=[ext], cmdclass={"build_ext": cpp_extension.BuildExtension})
