"""Loads the op library (a plain shared library: no Python module, no libpython)."""
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent


def library_path() -> Path:
    candidates = sorted(_HERE.glob("_C*.so"))
    if not candidates:
        raise ImportError(
            f"fusedconv's op library (_C*.so) is missing from {_HERE}: install the package "
            "with `pip install --no-build-isolation .` rather than importing the source tree")
    return candidates[0]


def load() -> None:
    if not hasattr(torch.ops, "fusedconv") or not hasattr(torch.ops.fusedconv, "forward"):
        torch.ops.load_library(str(library_path()))
