"""Install rm-tension: the `rmt_kernels` package and its optional C++/CUDA extension, and the runtime
requirements of the experiment scripts (which import the repository's common.py from beside them, so no
top-level `common` module is installed to shadow another package's).

    pip install --no-build-isolation -e .            # the toolkit
    pip install --no-build-isolation -e ".[test]"    # and pytest: what `bash run_all.sh` (either command) installs

The extension is optional: without a compiler (or with RMT_NO_EXT=1) the install still succeeds and
rmt_kernels falls back to its pure-torch reference ops. RMT_REQUIRE_EXT=1 makes a failed extension build
fail the install instead (run_all.sh sets it wherever a C++ compiler exists, so CI cannot pass on the
fallback). The CUDA variant is compiled only when torch sees CUDA and nvcc is present.
--no-build-isolation keeps the user's own torch.
"""
import os
import sys

from setuptools import setup

REQUIREMENTS = [
    "torch>=2.4",  # experiments/train.py: torch.optim.AdamW(fused=True) on CPU needs 2.4
    "transformers>=4.45",
    "accelerate>=0.34",
    "datasets>=2.19",
    "safetensors",
    "numpy",
    "h5py",
    "click>=8",
    "pybind11",
    "tqdm",
    "matplotlib",
    "gguf",
]
# trl: tests/test_external_rms.py trains a tiny RM with TRL's RewardTrainer (an RM made by another tool)
TEST_REQUIREMENTS = ["pytest", "trl>=1.0"]


def extension_modules():
    if os.environ.get("RMT_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        if os.environ.get("RMT_REQUIRE_EXT") == "1":
            raise  # RMT_REQUIRE_EXT=1 asks for the extension, and it cannot be built without torch
        print("rm-tension: torch is not importable at build time; building without the extension",
              file=sys.stderr)
        return [], {}
    here = os.path.dirname(os.path.abspath(__file__))
    csrc = os.path.join("rmt_kernels", "csrc")
    cpp_sources = sorted(os.path.join(csrc, f) for f in os.listdir(os.path.join(here, csrc)) if f.endswith(".cpp"))
    cuda_dir = os.path.join(csrc, "cuda")
    cuda_sources = sorted(os.path.join(cuda_dir, f) for f in os.listdir(os.path.join(here, cuda_dir)) if f.endswith(".cu"))
    if not cpp_sources:
        return [], {}
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    # Recent torch headers use C++20 features (torch.utils.cpp_extension itself defaults to c++20).
    cxx_flags = ["-O3", "-std=c++20"] + openmp
    use_cuda = bool(cuda_sources) and torch.cuda.is_available() and CUDA_HOME is not None
    if os.environ.get("RMT_FORCE_CUDA") == "1":
        use_cuda = bool(cuda_sources) and CUDA_HOME is not None
    if use_cuda:
        ext = CUDAExtension(
            "rmt_kernels._C",
            cpp_sources + cuda_sources,
            define_macros=[("RMT_WITH_CUDA", None)],
            # No --use_fast_math: the kernels are memory-bound float64 sums, and its flush-to-zero would zero
            # subnormal float32 activations.
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=openmp,
        )
    else:
        ext = CppExtension("rmt_kernels._C", cpp_sources, extra_compile_args=cxx_flags, extra_link_args=openmp)

    class OptionalBuildExtension(BuildExtension):
        """A failed compile (no compiler, an odd toolchain) must not fail the install: the package then
        runs its pure-torch reference ops, and `rmt_kernels.backend()` says so. With RMT_REQUIRE_EXT=1
        the build error is raised instead."""

        def run(self):
            try:
                super().run()
            except Exception as err:  # noqa: BLE001 — any build failure means the same: no extension
                if os.environ.get("RMT_REQUIRE_EXT") == "1":
                    raise  # the test command and CI: a broken kernel build must fail loudly, not skip tests
                print(f"rm-tension: WARNING: the C++/CUDA extension did not build ({err}); "
                      "rmt_kernels will use its pure-torch reference ops", file=sys.stderr)

    return [ext], {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()

setup(
    name="rm-tension",
    version="0.1.0",
    description="Helpfulness vs harmlessness tension inside reward models: train, evaluate, find and ablate neurons",
    python_requires=">=3.10",
    packages=["rmt_kernels"],
    package_data={"rmt_kernels": ["csrc/*.cpp", "csrc/*.h", "csrc/cuda/*.cu"]},
    install_requires=REQUIREMENTS,
    extras_require={"test": TEST_REQUIREMENTS},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
