"""fusedconv's own kernels launched through Triton's Python JIT: the benchmark's peer that shows
what launching the AOT images from C++ gains. Mirrors csrc/forward_cuda.cpp's launch sequence
(materialize algorithm) with the same variant table; not the product's run path, which never
imports Triton."""
import torch
import triton

from .triton_kernels import conv_sigmoid_groupnorm as K
from .triton_kernels import variants as V

_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _config(name, configs):
    return next(c for c in configs if c.name == name)


def forward(x, weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups, eps=1e-5,
            stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Same result as torch.ops.fusedconv.forward for valid CUDA inputs (no validation here),
    with the block configs the C++ runtime would choose."""
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    hw = h_out * w_out
    dtype = _DTYPES[x.dtype]
    major, minor = torch.cuda.get_device_capability(x.device)
    modes = V.precisions(10 * major + minor, dtype)
    mode = "native" if dtype != "fp32" else (
        "accurate" if torch.get_float32_matmul_precision() == "highest" else "tf32")
    conv_cfg = _config(torch.ops.fusedconv._conv_config(c_out), V.CONV_CONFIGS)
    bm, bc = conv_cfg.meta["BLOCK_M"], conv_cfg.meta["BLOCK_C"]
    tiles, cblocks = triton.cdiv(hw, bm), triton.cdiv(c_out, bc)
    f32 = dict(device=x.device, dtype=torch.float32)
    part_mean = torch.empty(n, c_out, tiles, **f32)
    part_m2 = torch.empty(n, c_out, tiles, **f32)
    stats = torch.empty(n, num_groups, 2, **f32)
    y = torch.empty(n, c_out, h_out, w_out, device=x.device, dtype=x.dtype)
    values = y if x.dtype == torch.float32 else torch.empty(n, c_out, h_out, w_out, **f32)
    wk = weight.reshape(c_out, -1).contiguous()
    cb = conv_bias if conv_bias is not None else bias
    cpg = c_out // num_groups
    K.conv_stats_kernel[(n * tiles * cblocks,)](
        x, wk, cb.reshape(-1), bias.reshape(-1), scale.reshape(-1), part_mean, part_m2, values,
        c_out, h, w, w_out, hw, kh, kw, wk.shape[1], *x.stride(), *stride, *padding, *dilation,
        tiles, cblocks, int(conv_bias is not None), STORE_V=True, PRECISION=modes[mode],
        num_warps=conv_cfg.num_warps, num_stages=conv_cfg.num_stages, **conv_cfg.meta)
    s_cfg = _config("b256" if cpg * tiles >= 512 else "b64", V.GROUP_STATS_CONFIGS)
    K.group_stats_kernel[(n * num_groups,)](part_mean, part_m2, stats, cpg, hw, tiles, bm, eps,
                                            num_warps=s_cfg.num_warps, **s_cfg.meta)
    a_cfg = _config("b512" if hw >= 512 else "b256", V.APPLY_CONFIGS)
    blocks = triton.cdiv(hw, a_cfg.meta["BLOCK"])
    gw = gn_weight if gn_weight is not None else bias
    gb = gn_bias if gn_bias is not None else bias
    K.group_norm_apply_kernel[(n * c_out * blocks,)](
        values, stats, gw.reshape(-1), gb.reshape(-1), y, c_out, hw, num_groups, cpg, blocks,
        int(gn_weight is not None), int(gn_bias is not None), num_warps=a_cfg.num_warps, **a_cfg.meta)
    return y


class JitModel(torch.nn.Module):
    """Wraps a FusedConvSigmoidGroupNorm's parameters, launching through the Triton JIT."""

    def __init__(self, fused):
        super().__init__()
        self.fused = fused

    def forward(self, x):
        c, gn = self.fused.conv, self.fused.group_norm
        return forward(x, c.weight, c.bias, self.fused.bias, self.fused.scale, gn.weight, gn.bias,
                       gn.num_groups, gn.eps, c.stride, c.padding, c.dilation)
