"""Builds fusedconv: AOT-compiles the Triton kernels (no GPU needed), then the op library.

    pip install --no-build-isolation .          # or: pip wheel --no-build-isolation .
    FUSEDCONV_ARCHS=89,90 FUSEDCONV_PTX_ARCHS=89 (the defaults) choose the images it carries.
"""
import os
import sys
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from build_scripts.aot_build import DEFAULT_ARCHS, DEFAULT_PTX_ARCHS, _parse_archs  # noqa: E402


def _triton_include_dir():
    try:
        import triton
    except ImportError as e:
        raise SystemExit("fusedconv's build needs triton==3.6.0 (its AOT compiler and cuda.h); "
                         "install it first") from e
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "include")


class BuildWithKernels(BuildExtension):
    """Runs build_scripts/aot_build.py into the build directory before compiling C++."""

    def build_extensions(self):
        from build_scripts import aot_build

        gen_dir = Path(self.build_temp).resolve() / "fusedconv_gen"
        cpp = aot_build.build(gen_dir, ARCHS, PTX_ARCHS, log=lambda m: print(m, flush=True))
        for ext in self.extensions:
            ext.sources.append(str(cpp))
            ext.include_dirs += [str(gen_dir), _triton_include_dir()]
        super().build_extensions()


ext = CppExtension(
    "fusedconv._C",
    sources=[str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc").glob("*.cpp"))],
    include_dirs=[str(ROOT / "csrc")],
    libraries=["dl"],
    extra_compile_args={"cxx": ["-O2", "-fvisibility=hidden"]},
    # No libtorch_python and no Python C API: the library loads into C++ programs too.
    py_limited_api=True,
)

torch_version = torch.__version__.split("+")[0]


def _arch_names(archs):
    return ", ".join(f"sm_{a}" for a in archs) or "none"


# The same variables and defaults BuildWithKernels compiles from, so that the wheel's
# description says which GPUs it serves.
ARCHS = _parse_archs(os.environ.get("FUSEDCONV_ARCHS", DEFAULT_ARCHS))
PTX_ARCHS = _parse_archs(os.environ.get("FUSEDCONV_PTX_ARCHS", DEFAULT_PTX_ARCHS))
CARRIES = f"cubins for {_arch_names(ARCHS)}; PTX for {_arch_names(PTX_ARCHS)}"
WHEEL_NOTE = (f"**This build's CUDA kernels: {CARRIES}.** It requires torch=={torch_version} "
              "exactly (the op library is built against its C++ ABI) and needs neither Triton "
              "nor a compiler at run time.\n\n")

setup(
    name="fusedconv",
    version="0.1.0",
    description="Conv2d + bias + scale + sigmoid + GroupNorm as one op: AOT-compiled Triton "
                f"kernels ({CARRIES}), launched from C++",
    long_description=WHEEL_NOTE + (ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=["fusedconv", "fusedconv.triton_kernels"],
    package_dir={"fusedconv": "python/fusedconv", "fusedconv.triton_kernels": "triton_kernels"},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildWithKernels.with_options(no_python_abi_suffix=True)},
    # The op library is built against this torch's C++ ABI.
    install_requires=[f"torch=={torch_version}"],
    python_requires=">=3.10",
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
