"""fusedconv's own kernels launched through Triton's Python JIT: the benchmark's peer that shows
what launching the AOT images from C++ gains. Not the product's run path, which never imports
Triton.

It runs the standalone file `python -m fusedconv export` writes (fusedconv.export: the same
kernel source, export_wrapper.py's launch sequence), so grid, buffers and launch order exist
once. Each kernel's autotuner is pinned to the one config the C++ runtime would choose (an
autotuner with a single config runs it without timing anything), so this peer and the AOT op
run the same kernel code at the same block sizes.
"""
import functools

import torch
import triton

from . import export
from .triton_kernels import variants as V


def _config(name, configs):
    return next(c for c in configs if c.name == name)


@functools.lru_cache(maxsize=None)
def _module(arch, dtype, conv, stats, apply, copy, pack):
    cl_configs = V.KERNELS["conv_cl_stats"].configs_for(dtype)
    return export.load(arch, {"conv_stats_kernel": [_config(conv, V.CONV_CONFIGS)],
                              "conv_cl_stats_kernel": [_config(conv, cl_configs)],
                              "group_stats_kernel": [_config(stats, V.GROUP_STATS_CONFIGS)],
                              "group_norm_apply_kernel": [_config(apply, V.APPLY_CONFIGS)],
                              "to_channels_last_kernel": [_config(copy, V.TRANSPOSE_CONFIGS)],
                              "pack_weight_kernel": [_config(pack, V.PACK_CONFIGS)]})


def forward(x, weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups, eps=1e-5,
            stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Same result as torch.ops.fusedconv.forward for valid CUDA inputs (no validation here),
    with the block configs the C++ runtime would choose."""
    c_out, _, kh, kw = weight.shape
    h_out = (x.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (x.shape[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    hw = h_out * w_out
    # The C++ runtime's choices (csrc/forward_cuda.cpp): algorithm by mode and C_in (the
    # exported wrapper follows the same rule), conv by shape, the others by size.
    dtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[x.dtype]
    mode = "native" if dtype != "fp32" else "accurate" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    channels_last = torch.ops.fusedconv._default_algorithm(mode, x.shape[1]) == "channels_last"
    conv = torch.ops.fusedconv._conv_config(c_out, w_out, channels_last)
    table = V.KERNELS["conv_cl_stats" if channels_last else "conv_stats"].configs_for(dtype)
    meta = _config(conv, table).meta
    tiles = triton.cdiv(h_out, meta["BLOCK_H"]) * triton.cdiv(w_out, meta["BLOCK_W"])
    stats = "b256" if c_out // num_groups * tiles >= 512 else "b64"
    apply = "b512" if hw >= 512 else "b256"
    copy = "b256" if x.shape[3] >= 128 else "b64"
    pack = "b16" if kh * kw + kh * kw % 2 > 8 else "b8"
    major, minor = torch.cuda.get_device_capability(x.device)
    module = _module(10 * major + minor, dtype, conv, stats, apply, copy, pack)
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
