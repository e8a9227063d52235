"""fusedconv: Conv2d -> +bias -> *scale -> sigmoid -> GroupNorm as one PyTorch op,
torch.ops.fusedconv.forward, from AOT-compiled Triton kernels launched from C++."""
from . import _library

_library.load()

from .autograd import register as _register_autograd  # noqa: E402

_register_autograd()

from .module import FusedConvSigmoidGroupNorm, ModelNew  # noqa: E402
from .ops import (ALGORITHMS, autotune, autotune_entries, build_report, conv_configs,  # noqa: E402
                  forced_algorithm, forced_config, forward, plain_triton, resident_configs)

__version__ = "0.1.0"
__all__ = ["forward", "FusedConvSigmoidGroupNorm", "ModelNew", "build_report", "forced_config",
           "forced_algorithm", "plain_triton", "conv_configs", "resident_configs", "ALGORITHMS", "autotune", "autotune_entries"]
