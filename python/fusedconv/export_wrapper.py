"""The Python launch sequences of fusedconv's kernels, in plain torch + triton: the choice of
algorithm and flavour, grid, buffers, launch order, and the KernelBench-style ModelNew.

Source, not a module to import: `fusedconv.export` copies the functions and class below,
verbatim, into the standalone file after the kernels and triton_kernels/rules.py (the choices,
also verbatim), and fusedconv.triton_jit and tests/test_kernels_interpreter.py run that file.
So they may use torch, nn and triton only (the file's imports), the rules imported below, and
the names set to None here, which the exported file defines above them: the kernels (under
@triton.autotune, except the FOLLOWERS of export.py, which run the config the conv kernel
before them chose, and the TABLES' kernels, which run a config the wrapper picks: the resident
kernel one of RESIDENT_CONFIGS, the Gluon FMA conv kernels the one fma_config gives), and
what is rendered per arch: dot_precision, RESIDENT_CONFIGS and fma_config (on sm_89 with the
Gluon kernels' configs and the PLAIN_TRITON switch; elsewhere it gives none, and the file
carries no Gluon kernel and binds their names to None).

Block sizes are the autotuner's choice, so nothing here assumes one: grids are lambdas over
META, the tile counts the conv kernels take (and the channels-last kernels' UNIT flavour) come
from @triton.heuristics on the same config (export.py, DERIVED), and the kernels after a conv
kernel read its tile size from the conv's best_config after the launch (or from the FMA config
that ran).
"""
import torch
import torch.nn as nn
import triton

from .triton_kernels.rules import (ALGORITHMS, channels_last_taps, channels_last_unit, conv_taps, default_algorithm,
                                   fma_conv_algorithm, fma_x_aligned, materialize_chunk, output_size, precision_mode,
                                   resident_by_default, resident_fits)

conv_stats_kernel = conv_norm_kernel = group_stats_kernel = group_norm_apply_kernel = None
to_channels_last_kernel = pack_weight_kernel = conv_cl_stats_kernel = conv_cl_norm_kernel = None
conv3x3_fma_stats_kernel = conv3x3_fma_norm_kernel = None
conv_resident_kernel = dot_precision = RESIDENT_CONFIGS = fma_config = None


def conv_sigmoid_group_norm(x, weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups,
                            eps=1e-5, stride=(1, 1), padding=(0, 0), dilation=(1, 1), algorithm=None):
    """GroupNorm(sigmoid((conv2d(x, weight) + conv_bias + bias) * scale)) for CUDA tensors of
    one dtype (float32, float16 or bfloat16; CPU tensors under TRITON_INTERPRET=1), zero
    padding, conv groups 1; conv_bias, gn_weight and gn_bias may be None. `algorithm` (one of
    ALGORITHMS) overrides the choice fusedconv's op makes: resident for small problems whose
    groups fit one of RESIDENT_CONFIGS, else fma_conv_algorithm (recompute) where the Gluon FMA
    conv runs (fma_config gives a config: exact fp32 on sm_89, the unpadded 3 x 3 kernel at
    unit stride, W_out at least one tile), else default_algorithm (channels_last for fp16, bf16
    and TF32 over at most 8 input channels, materialize otherwise).
    Unvalidated: the fusedconv op checks its arguments; this file trusts them."""
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    h_out = output_size(h, padding[0], dilation[0], kh, stride[0])
    w_out = output_size(w, padding[1], dilation[1], kw, stride[1])
    y = _empty(n, c_out, h_out, w_out, device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    dtype, mode = _precision(x.dtype)
    resident = _resident_config(c_out // num_groups, h_out * w_out)
    taps = conv_taps(kh, kw, padding[0], padding[1], dilation[1], x.stride(3))
    fma = fma_config(mode, taps, stride[0], stride[1], dilation[0], w_out)
    if algorithm is None:
        macs = n * c_out * h_out * w_out * c_in * kh * kw
        small = resident is not None and resident_by_default(n * num_groups, macs)
        tiled = default_algorithm(mode, c_in) if fma is None else fma_conv_algorithm()
        algorithm = "resident" if small else tiled
    # A missing parameter is a masked-off load: any tensor serves as its pointer.
    params = [(t if t is not None else bias).reshape(-1).contiguous()
              for t in (conv_bias, bias, scale, gn_weight, gn_bias)]
    params += [int(t is not None) for t in (conv_bias, gn_weight, gn_bias)]
    operands = (x, weight, params, num_groups, eps, stride, padding, dilation, y)
    if algorithm == "resident":
        if resident is None:
            raise ValueError(f"the resident algorithm needs a group that fits one of RESIDENT_CONFIGS (BLOCK_C "
                             f"channels x BLOCK_M positions); here a group has {c_out // num_groups} x {h_out * w_out}")
        return _resident(*operands, resident)
    precision = dot_precision(dtype, mode)
    if algorithm == "channels_last":
        return _channels_last(*operands, precision)
    return _nchw(*operands, precision, taps, fma, algorithm == "materialize")


def _empty(*shape, device, dtype):
    """Every buffer the launch sequences allocate, the output included: one name, so a test
    can fill them all with NaN and see any element no kernel writes."""
    return torch.empty(*shape, device=device, dtype=dtype)


def _benchmark(kernel_call, quantiles):
    """The autotuners' timing: Triton's benchmarker on a GPU. Under the interpreter
    (TRITON_INTERPRET=1, CPU tensors) Triton has none (it asks for a GPU driver and finds 0),
    so nothing is timed there: the candidates tie and each kernel runs its first config."""
    if triton.knobs.runtime.interpret:
        return [0.0] * len(quantiles)
    return triton.runtime.driver.active.get_benchmarker()(kernel_call, quantiles=quantiles)


def _precision(dtype):
    """(dtype name, precision mode) as the op reads them: fp32 follows
    torch.set_float32_matmul_precision."""
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    if dtype not in names:
        raise TypeError(f"float32, float16 or bfloat16 expected, got {dtype}")
    return names[dtype], precision_mode(names[dtype], torch.get_float32_matmul_precision() == "highest")


def _resident_config(channels_per_group, hw_out):
    """The smallest of RESIDENT_CONFIGS that holds a whole group, as the op picks it, or None."""
    fits = [c for c in RESIDENT_CONFIGS
            if resident_fits(c.kwargs["BLOCK_C"], c.kwargs["BLOCK_M"], channels_per_group, hw_out)]
    return min(fits, key=lambda c: c.kwargs["BLOCK_C"] * c.kwargs["BLOCK_M"], default=None)


def _resident(x, weight, params, num_groups, eps, stride, padding, dilation, y, config):
    """One launch, one program per (sample, group) holding the whole group at `config`."""
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    conv_bias, bias, scale, gamma, beta, has_conv_bias, has_gamma, has_beta = params
    wk = weight.reshape(c_out, -1).contiguous()
    conv_resident_kernel[(n * num_groups,)](
        x, wk, conv_bias, bias, scale, gamma, beta, y, c_out, h, w, y.shape[3], y.shape[2] * y.shape[3], kh, kw,
        wk.shape[1], *x.stride(), *stride, *padding, *dilation, has_conv_bias, num_groups, c_out // num_groups,
        has_gamma, has_beta, eps, TAPS=conv_taps(kh, kw, padding[0], padding[1], dilation[1], x.stride(3)),
        **config.all_kwargs())
    return y


def _nchw(x, weight, params, num_groups, eps, stride, padding, dilation, y, precision, taps, fma, materialize):
    """The NCHW sequences into y: conv + statistics over x as it is, merge, then either
    normalize the fp32 values the conv stored (materialize) or run the conv again,
    normalized (recompute). With an FMA config (fma_config), the conv passes are the Gluon
    FMA kernels at that config over the weight packed for them, and materialize runs the
    sequence once per chunk of materialize_chunk samples, as the op does."""
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    _, _, h_out, w_out = y.shape
    if fma is None:
        kernels = (conv_stats_kernel, conv_norm_kernel)
        wk, flavour = weight.reshape(c_out, -1).contiguous(), dict(PRECISION=precision, TAPS=taps)
    else:
        # The twins' arguments, without their tl.dot precision and flavour constexprs; no
        # autotuner: they run the config the rules named.
        kernels = (conv3x3_fma_stats_kernel, conv3x3_fma_norm_kernel)
        # recompute's aligned flavour as the op runs it; Triton's JIT specializes on the same
        # divisibility facts the op's aligned images are built with.
        aligned = not materialize and fma_x_aligned(fma.kwargs["BLOCK_W"], x.data_ptr(), w, *x.stride()[:3])
        wk, flavour = _fma_weight(weight, fma.kwargs["BLOCK_C"]), dict(fma.all_kwargs(), X_ALIGNED=aligned)
    geometry = (c_out, h, w, h_out, w_out, kh, kw, weight[0].numel(), *x.stride(), *stride, *padding, *dilation)
    samples = materialize_chunk(fma is not None, n, c_out, h_out * w_out) if materialize else n
    for n0 in range(0, n, samples):
        _nchw_passes(x[n0:n0 + samples], wk, params, num_groups, eps, geometry, y[n0:n0 + samples], kernels, fma,
                     flavour, materialize)
    return y


def _nchw_passes(x, wk, params, num_groups, eps, geometry, y, kernels, fma, flavour, materialize):
    """One _nchw sequence over the samples of x into y: `kernels` the (statistics, normalize)
    conv kernels, launched with `flavour`; `fma` the Gluon FMA config they run, or None (the
    plain kernels' autotuners choose)."""
    n, c_out, h_out, w_out = y.shape
    conv_bias, bias, scale, gamma, beta, has_conv_bias, has_gamma, has_beta = params
    stats_kernel, norm_kernel = kernels
    part_mean, part_m2 = _partials(n, c_out, h_out, w_out, stats_kernel.configs if fma is None else [fma], x.device)
    # fp32 values are normalized in place (group_norm_apply_kernel's autotuner restores y
    # between its timing runs); half inputs need an fp32 buffer of their own. Without
    # STORE_V the kernel neither reads nor writes v_ptr.
    values = part_mean if not materialize else y if x.dtype == torch.float32 else \
        _empty(n, c_out, h_out * w_out, device=x.device, dtype=torch.float32)
    grid = _conv_grid(n, h_out, w_out, c_out)
    stats_kernel[grid](x, wk, conv_bias, bias, scale, part_mean, part_m2, values, *geometry,
                       has_conv_bias=has_conv_bias, STORE_V=materialize, **flavour)
    ran = stats_kernel.best_config if fma is None else fma  # the config that just ran
    stats = _group_stats(part_mean, part_m2, n, num_groups, c_out // num_groups, h_out, w_out,
                         ran.kwargs["BLOCK_H"], ran.kwargs["BLOCK_W"], eps)
    if materialize:
        _apply(values, stats, gamma, beta, has_gamma, has_beta, num_groups, y)
    else:
        if fma is None:  # the plain normalize pass repeats the tiles its statistics pass chose
            flavour = dict(flavour, **ran.all_kwargs())
        norm_kernel[grid](x, wk, conv_bias, bias, scale, gamma, beta, stats, y, *geometry,
                          has_conv_bias=has_conv_bias, num_groups=num_groups, channels_per_group=c_out // num_groups,
                          has_gn_weight=has_gamma, has_gn_bias=has_beta, **flavour)


def _channels_last(x, weight, params, num_groups, eps, stride, padding, dilation, y, precision):
    """The channels-last sequence into y: x copied to [N, H, W, 8 * chunks] (channels past
    C_in zero) and the weight packed in the conv tile's K order, conv + statistics, merge,
    conv again, normalized."""
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    _, _, h_out, w_out = y.shape
    conv_bias, bias, scale, gamma, beta, has_conv_bias, has_gamma, has_beta = params
    chunks = triton.cdiv(c_in, 8)
    xt = _to_channels_last(x, chunks)
    wt = _packed_weight(weight, chunks)
    part_mean, part_m2 = _partials(n, c_out, h_out, w_out, conv_cl_stats_kernel.configs, x.device)
    geometry = (c_out, h, w, h_out, w_out, kh, kw, chunks, *stride, *padding, *dilation)
    taps = channels_last_taps(kh, kw, padding[0], padding[1])
    grid = _conv_grid(n, h_out, w_out, c_out)
    conv_cl_stats_kernel[grid](xt, wt, conv_bias, bias, scale, part_mean, part_m2, *geometry,
                               has_conv_bias=has_conv_bias, PRECISION=precision, TAPS=taps)
    best = conv_cl_stats_kernel.best_config  # the normalize pass repeats its tiles
    stats = _group_stats(part_mean, part_m2, n, num_groups, c_out // num_groups, h_out, w_out,
                         best.kwargs["BLOCK_H"], best.kwargs["BLOCK_W"], eps)
    conv_cl_norm_kernel[grid](xt, wt, conv_bias, bias, scale, gamma, beta, stats, y, *geometry,
                              has_conv_bias=has_conv_bias, num_groups=num_groups,
                              channels_per_group=c_out // num_groups, has_gn_weight=has_gamma, has_gn_bias=has_beta,
                              PRECISION=precision, TAPS=taps, **best.all_kwargs())
    return y


def _conv_grid(n, h_out, w_out, c_out):
    """A conv kernel's grid, one program per (sample, tile, channel block) of the config META."""
    return lambda META: (n * triton.cdiv(h_out, META["BLOCK_H"]) * triton.cdiv(w_out, META["BLOCK_W"])
                         * triton.cdiv(c_out, META["BLOCK_C"]),)


def _channels_last_unit(args):
    """The channels-last conv kernels' UNIT flavour for one launch's arguments, its config's
    tile counts included (a heuristic, export.py's DERIVED), as the op picks it: every pointer
    16-byte aligned and the rule's facts."""
    aligned = all(v.data_ptr() % 16 == 0 for k, v in args.items() if k.endswith("_ptr"))
    return channels_last_unit(args["TAPS"], args["num_chunks"], args["num_c_blocks"], args["C_out"], aligned,
                              args["stride_h"], args["stride_w"], args["dil_h"], args["dil_w"])


def _partials(n, c_out, h_out, w_out, configs, device):
    """Per-tile mean and M2 of each channel: sized for the candidate config with the most tiles
    (the autotuner picks one at the launch); the kernels index them flat."""
    tiles = max(triton.cdiv(h_out, c.kwargs["BLOCK_H"]) * triton.cdiv(w_out, c.kwargs["BLOCK_W"]) for c in configs)
    return tuple(_empty(n * c_out * tiles, device=device, dtype=torch.float32) for _ in range(2))


def _group_stats(part_mean, part_m2, n, num_groups, channels_per_group, h_out, w_out, tile_h, tile_w, eps):
    """(mean, rstd) per sample and group, [N, groups, 2], merged from the partials of tiles of
    tile_h x tile_w positions."""
    stats = _empty(n, num_groups, 2, device=part_mean.device, dtype=torch.float32)
    group_stats_kernel[(n * num_groups,)](part_mean, part_m2, stats, channels_per_group, h_out, w_out,
                                          triton.cdiv(h_out, tile_h), triton.cdiv(w_out, tile_w), tile_h, tile_w, eps)
    return stats


def _apply(values, stats, gamma, beta, has_gamma, has_beta, num_groups, y):
    """y = the stored fp32 values, normalized (in place where values is y)."""
    n, c_out, h_out, w_out = y.shape
    hw = h_out * w_out
    group_norm_apply_kernel[lambda META: (n * c_out * triton.cdiv(hw, META["BLOCK"]),)](
        values, stats, gamma, beta, y, c_out, hw, num_groups, c_out // num_groups,
        has_gn_weight=has_gamma, has_gn_bias=has_beta)


def _fma_weight(weight, block_c):
    """The Gluon FMA conv kernels' weight, [ceil(C_out / block_c), C_in * KH * KW, block_c]: per
    block of block_c output channels, a tap's channels adjacent, channels past C_out zero (the
    op's launcher packs it alike)."""
    c_out = weight.shape[0]
    blocks = triton.cdiv(c_out, block_c)
    rows = nn.functional.pad(weight.reshape(c_out, -1), (0, 0, 0, blocks * block_c - c_out))
    wk = _empty(blocks, rows.shape[1], block_c, device=weight.device, dtype=weight.dtype)
    return wk.copy_(rows.view(blocks, block_c, -1).transpose(1, 2))


def _to_channels_last(x, chunks):
    """x as [N, H, W, 8 * chunks], channels past C_in zero."""
    n, c_in, h, w = x.shape
    xt = _empty(n, h, w, 8 * chunks, device=x.device, dtype=x.dtype)
    to_channels_last_kernel[lambda META: (n * h * triton.cdiv(w, META["BLOCK"]),)](
        x, xt, c_in, h, w, *x.stride(), chunks)
    return xt


def _packed_weight(weight, chunks):
    """The weight as [C_out, chunks, taps rounded up to even, 8], the channels-last conv tile's
    K order, zero padded."""
    c_out, c_in, kh, kw = weight.shape
    taps = kh * kw
    wt = _empty(c_out, chunks, taps + taps % 2, 8, device=weight.device, dtype=weight.dtype)
    pack_weight_kernel[(c_out * chunks,)](weight.contiguous(), wt, c_in, taps, taps + taps % 2, chunks)
    return wt


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
