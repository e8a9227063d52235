"""fusedconv's own kernels launched through Triton's Python JIT: the benchmark's peer that shows
what launching the AOT images from C++ gains. Not the product's run path, which never imports
Triton.

It runs the standalone file `python -m fusedconv export` writes (fusedconv.export: the same
kernel source, export_wrapper.py's launch sequence, rules.py's choices), so grid, buffers,
launch order and the choice of algorithm exist once. Each kernel's autotuner is pinned to the
one config the C++ runtime would choose (an autotuner with a single config runs it without
timing anything), so this peer and the AOT op run the same kernel code at the same block sizes.
"""
import functools

import torch
import triton

from . import export
from .triton_kernels import rules
from .triton_kernels import variants as V

_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@functools.lru_cache(maxsize=None)
def _module(arch, dtype, conv, stats, apply, copy, pack):
    return export.load(arch, export.pinned(dtype, conv, stats, apply, copy, pack))


def forward(x, weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups, eps=1e-5,
            stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Same result as torch.ops.fusedconv.forward for valid CUDA inputs (no validation here),
    with the block configs the C++ runtime would choose (the file's wrapper picks the
    algorithm, resident included, by the same rules)."""
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    h_out = rules.output_size(h, padding[0], dilation[0], kh, stride[0])
    w_out = rules.output_size(w, padding[1], dilation[1], kw, stride[1])
    dtype = _DTYPES[x.dtype]
    mode = rules.precision_mode(dtype, torch.get_float32_matmul_precision() == "highest")
    cl = rules.default_algorithm(mode, c_in) == "channels_last"
    conv = rules.conv_config(c_out, w_out, cl)
    meta = next(c.meta for c in V.KERNELS["conv_cl_stats" if cl else "conv_stats"].configs_for(dtype) if c.name == conv)
    tiles = triton.cdiv(h_out, meta["BLOCK_H"]) * triton.cdiv(w_out, meta["BLOCK_W"])
    taps = kh * kw
    major, minor = torch.cuda.get_device_capability(x.device)
    module = _module(10 * major + minor, dtype, conv, rules.group_stats_config(c_out // num_groups * tiles),
                     rules.apply_config(h_out * w_out), rules.copy_config(w), rules.pack_config(taps + taps % 2))
    return module.conv_sigmoid_group_norm(x, weight, conv_bias, bias, scale, gn_weight, gn_bias,
                                          num_groups, eps, stride, padding, dilation)


class JitModel(torch.nn.Module):
    """Wraps a FusedConvSigmoidGroupNorm's parameters, launching through the Triton JIT."""

    def __init__(self, fused):
        super().__init__()
        self.fused = fused

    def forward(self, x):
        c, gn = self.fused.conv, self.fused.group_norm
        return forward(x, c.weight, c.bias, self.fused.bias, self.fused.scale, gn.weight, gn.bias,
                       gn.num_groups, gn.eps, c.stride, c.padding, c.dilation)
