"""The launch sequences of fusedconv's Triton-JIT path, in plain torch + triton: grid, buffers,
launch order, and the KernelBench-style ModelNew.

Source, not a module to import: `fusedconv.export` copies the functions and class below,
verbatim, into the standalone file after the kernels, and fusedconv.triton_jit runs that file.
So they may use torch, nn and triton only (the file's imports), and the names set to None here,
which the exported file defines above them: the kernels (under @triton.autotune, except
conv_cl_norm_kernel, which runs the config conv_cl_stats_kernel chose), and dot_precision,
rendered from variants.precisions for the file's arch.

Block sizes are the autotuner's choice, so nothing here assumes one: grids are lambdas over
META, the tile counts the kernels take as arguments come from @triton.heuristics on the same
config (export.py, DERIVED), and the kernels after a conv kernel read its tile size from the
conv's best_config after the launch.
"""
import torch
import torch.nn as nn
import triton

conv_stats_kernel = group_stats_kernel = group_norm_apply_kernel = dot_precision = None
to_channels_last_kernel = pack_weight_kernel = conv_cl_stats_kernel = conv_cl_norm_kernel = None


def algorithm(dtype, c_in):
    """The launch sequence for a dtype and input channel count, as the op's default_algorithm
    (csrc/forward_cuda.cpp) picks it on large inputs: channels_last's second conv beats
    materialize's extra bytes only for 16-bit inputs and TF32 over one chunk of 8 channels."""
    fast = dtype != torch.float32 or torch.get_float32_matmul_precision() != "highest"
    return "channels_last" if fast and c_in <= 8 else "materialize"


def conv_sigmoid_group_norm(x, weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups,
                            eps=1e-5, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """GroupNorm(sigmoid((conv2d(x, weight) + conv_bias + bias) * scale)) for CUDA tensors of
    one dtype (float32, float16 or bfloat16), zero padding, conv groups 1, with the algorithm
    fusedconv's op takes by default on large inputs: channels_last for fp16, bf16 and TF32 with
    at most 8 input channels, materialize otherwise. conv_bias, gn_weight and gn_bias may be None.
    Unvalidated: the fusedconv op checks its arguments; this file trusts them."""
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    hw, cpg = h_out * w_out, c_out // num_groups
    precision = dot_precision(x.dtype)
    y = torch.empty(n, c_out, h_out, w_out, device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    if algorithm(x.dtype, x.shape[1]) == "channels_last":
        return _channels_last(x, weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups, eps,
                              stride, padding, dilation, y, precision)
    f32 = dict(device=x.device, dtype=torch.float32)
    # fp32 values are normalized in place (group_norm_apply_kernel's autotuner restores y
    # between its timing runs); half inputs need an fp32 buffer of their own.
    values = y if x.dtype == torch.float32 else torch.empty(n, c_out, hw, **f32)
    # The partials' layout, [N, C_out, tiles], follows the tile the autotuner will pick: size
    # them for the candidate with the most tiles; the kernels index them flat.
    def tiles(meta):
        return triton.cdiv(h_out, meta["BLOCK_H"]) * triton.cdiv(w_out, meta["BLOCK_W"])
    max_tiles = max(tiles(c.kwargs) for c in conv_stats_kernel.configs)
    part_mean = torch.empty(n * c_out * max_tiles, **f32)
    part_m2 = torch.empty_like(part_mean)
    stats = torch.empty(n, num_groups, 2, **f32)
    wk = weight.reshape(c_out, -1).contiguous()
    has_conv_bias = conv_bias is not None
    conv_bias = (conv_bias if has_conv_bias else bias).reshape(-1).contiguous()
    conv_stats_kernel[lambda META: (n * tiles(META) * triton.cdiv(c_out, META["BLOCK_C"]),)](
        x, wk, conv_bias, bias.reshape(-1).contiguous(), scale.reshape(-1).contiguous(),
        part_mean, part_m2, values,
        c_out, h, w, h_out, w_out, kh, kw, wk.shape[1], *x.stride(), *stride, *padding, *dilation,
        has_conv_bias=int(has_conv_bias), PRECISION=precision, STORE_V=True,
        TAPS=3 if (kh, kw) == (3, 3) and tuple(padding) == (0, 0) and dilation[1] == 1 and x.stride(3) == 1 else 0)
    # The config that just ran:
    tile_h, tile_w = (conv_stats_kernel.best_config.kwargs[k] for k in ("BLOCK_H", "BLOCK_W"))
    group_stats_kernel[(n * num_groups,)](part_mean, part_m2, stats, cpg, h_out, w_out, triton.cdiv(h_out, tile_h),
                                          triton.cdiv(w_out, tile_w), tile_h, tile_w, eps)
    # A missing affine parameter is a masked-off load: any tensor serves as its pointer.
    gamma = (gn_weight if gn_weight is not None else bias).reshape(-1).contiguous()
    beta = (gn_bias if gn_bias is not None else bias).reshape(-1).contiguous()
    group_norm_apply_kernel[lambda META: (n * c_out * triton.cdiv(hw, META["BLOCK"]),)](
        values, stats, gamma, beta, y, c_out, hw, num_groups, cpg,
        has_gn_weight=int(gn_weight is not None), has_gn_bias=int(gn_bias is not None))
    return y


def _channels_last(x, weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups, eps, stride, padding,
                   dilation, y, precision):
    """The channels-last sequence into y: x copied to [N, H, W, 8 * chunks] (channels past
    C_in zero) and the weight packed in the conv tile's K order, conv + statistics, merge,
    conv + normalize."""
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    _, _, h_out, w_out = y.shape
    chunks, taps = triton.cdiv(c_in, 8), kh * kw
    xt = torch.empty(n, h, w, 8 * chunks, device=x.device, dtype=x.dtype)
    wt = torch.empty(c_out, chunks, taps + taps % 2, 8, device=x.device, dtype=x.dtype)
    to_channels_last_kernel[lambda META: (n * h * triton.cdiv(w, META["BLOCK"]),)](
        x, xt, c_in, h, w, *x.stride(), chunks)
    pack_weight_kernel[(c_out * chunks,)](weight.contiguous(), wt, c_in, taps, taps + taps % 2, chunks)

    def tiling(meta):
        return triton.cdiv(h_out, meta["BLOCK_H"]), triton.cdiv(w_out, meta["BLOCK_W"])

    f32 = dict(device=x.device, dtype=torch.float32)
    max_tiles = max(th * tw for th, tw in (tiling(c.kwargs) for c in conv_cl_stats_kernel.configs))
    part_mean = torch.empty(n * c_out * max_tiles, **f32)
    part_m2 = torch.empty_like(part_mean)
    stats = torch.empty(n, num_groups, 2, **f32)
    has_conv_bias = conv_bias is not None
    conv_bias = (conv_bias if has_conv_bias else bias).reshape(-1).contiguous()
    bias, scale = bias.reshape(-1).contiguous(), scale.reshape(-1).contiguous()
    taps_flavour = 3 if (kh, kw) == (3, 3) and tuple(padding) == (0, 0) else 0
    conv_cl_stats_kernel[lambda META: (n * tiling(META)[0] * tiling(META)[1] * triton.cdiv(c_out, META["BLOCK_C"]),)](
        xt, wt, conv_bias, bias, scale, part_mean, part_m2, c_out, h, w, h_out, w_out, kh, kw, chunks,
        *stride, *padding, *dilation, has_conv_bias=int(has_conv_bias), PRECISION=precision, TAPS=taps_flavour,
        UNIT=False)
    # The normalize pass repeats the statistics pass's tiles: the config that just ran.
    best = conv_cl_stats_kernel.best_config
    (th, tw), cblocks = tiling(best.kwargs), triton.cdiv(c_out, best.kwargs["BLOCK_C"])
    group_stats_kernel[(n * num_groups,)](part_mean, part_m2, stats, c_out // num_groups, h_out, w_out, th, tw,
                                          best.kwargs["BLOCK_H"], best.kwargs["BLOCK_W"], eps)
    gamma = (gn_weight if gn_weight is not None else bias).reshape(-1).contiguous()
    beta = (gn_bias if gn_bias is not None else bias).reshape(-1).contiguous()
    conv_cl_norm_kernel[(n * th * tw * cblocks,)](
        xt, wt, conv_bias, bias, scale, gamma, beta, stats, y, c_out, h, w, h_out, w_out, kh, kw, chunks,
        *stride, *padding, *dilation, th, tw, cblocks, int(has_conv_bias), num_groups, c_out // num_groups,
        int(gn_weight is not None), int(gn_bias is not None), PRECISION=precision, TAPS=taps_flavour, UNIT=False,
        num_warps=best.num_warps, num_stages=best.num_stages, **best.kwargs)
    return y


class ModelNew(nn.Module):
    """The reference Model (conv -> + bias -> * scale -> sigmoid -> GroupNorm) on the kernels
    above: the same constructor, parameters and state_dict keys, so a reference state_dict
    loads as is. float32, float16 or bfloat16 (cast the module and the input alike); the conv's
    stride, padding and dilation are read at each call."""

    def __init__(self, in_channels, out_channels, kernel_size, num_groups, bias_shape, scale_shape):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size)
        self.bias = nn.Parameter(torch.randn(bias_shape))
        self.scale = nn.Parameter(torch.randn(scale_shape))
        self.group_norm = nn.GroupNorm(num_groups, out_channels)

    def forward(self, x):
        conv, gn = self.conv, self.group_norm
        return conv_sigmoid_group_norm(x, conv.weight, conv.bias, self.bias, self.scale, gn.weight, gn.bias,
                                       gn.num_groups, gn.eps, conv.stride, conv.padding, conv.dilation)
