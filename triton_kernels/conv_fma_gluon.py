"""The accurate fp32 3 x 3 conv passes as Gluon kernels with register-blocked FP32 FMAs.

Same arguments, tiles and outputs as conv_stats_kernel / conv_norm_kernel in
conv_sigmoid_groupnorm.py (their plain-Triton twins, which the interpreter tests run and which
fusedconv.plain_triton() / FUSEDCONV_PLAIN_TRITON=1 select), except that the weight comes packed
per channel block, for the unpadded 3 x 3 kernel at unit stride and dilation
(rules.fma_conv_config). Triton's FMA dot, which the twins lower to in exact fp32 on sm_89,
re-reads x and the weight per product and runs at ~15% of the FP32 peak there. Here an explicit
layout gives each thread CT output channels x MT consecutive columns of one output row, so per
(input channel, kernel row) a thread loads its MT + 2 x values once and reuses each for the 3
taps, and each weight value feeds MT FMAs: the inner loop is ~80% FFMA in SASS.

    layout L3 over [BLOCK_C channels, G column groups, MT columns]: a thread holds [CT, 1, MT],
    TC threads along channels, 32 / TC along column groups, the warps along column groups;
    BLOCK_W = G * MT columns of one output row a program (BLOCK_H = 1).

Two flavours (variants._FMA_FLAVOURS): any x with adjacent columns, a thread's MT + 2 x values
loaded one by one and the last column tile shifted left to stay inside x; and X_ALIGNED, where
x is 16-byte aligned and W and its strides multiples of 16 (rules.fma_x_aligned), which loads
them as 16-byte vectors and masks what lies past W instead.

The accumulation order is the twins' (k = ci * 9 + kh * 3 + kw, one FMA chain per output), so
the conv values agree with the sm_89 twin bit for bit; the tile statistics sum in another order.
One program per (sample, output row, column block, channel block), channel block fastest, as
the twins number them.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def _sigmoid_of_log2(t):
    """sigmoid(z) from t = -z * log2(e), as the twins compute it (conv_sigmoid_groupnorm.py):
    1 / sqrt(1 + 2^t)^2 with the approximate exp2 and rsqrt. Gluon kernels cannot call
    @triton.jit helpers, so this is a second copy of that one line."""
    r = gl.rsqrt(1.0 + gl.exp2(t))
    return r * r


@gluon.jit
def _stack4(a0, a1, a2, a3):
    """Four [G] tensors as one [G, 4], element j = a_j: joins move no data (each thread keeps
    its own registers). join adds its new axis last, so the outer join takes the odd elements
    and the inner ones pair elements two apart (bit-reversed order)."""
    return gl.reshape(gl.join(gl.join(a0, a2), gl.join(a1, a3)), [a0.shape[0], 4])


@gluon.jit
def _stack8(a0, a1, a2, a3, a4, a5, a6, a7):
    """Eight [G] tensors as one [G, 8], element j = a_j (as _stack4, one level deeper)."""
    return gl.reshape(gl.join(gl.join(gl.join(a0, a4), gl.join(a2, a6)), gl.join(gl.join(a1, a5), gl.join(a3, a7))),
                      [a0.shape[0], 8])


@gluon.jit
def _window_values(body, halo, MT: gl.constexpr):
    """A thread's MT columns [G, MT] and the 2 after them [G, 2] as MT + 2 [G] tensors a0, a1, ...
    (ten: past MT + 2 repeats, unused). Splits move no data: each thread keeps its registers."""
    G: gl.constexpr = body.shape[0]
    a8, a9 = gl.split(halo)
    if MT == 8:
        even, odd = gl.split(gl.reshape(body, [G, 4, 2]))      # columns 0 2 4 6 | 1 3 5 7
        e0, e2 = gl.split(gl.reshape(even, [G, 2, 2]))       # 0 4 | 2 6
        o1, o3 = gl.split(gl.reshape(odd, [G, 2, 2]))        # 1 5 | 3 7
        a0, a4 = gl.split(e0)
        a2, a6 = gl.split(e2)
        a1, a5 = gl.split(o1)
        a3, a7 = gl.split(o3)
        a8 = gl.convert_layout(a8, a0.type.layout)
        a9 = gl.convert_layout(a9, a0.type.layout)
        return a0, a1, a2, a3, a4, a5, a6, a7, a8, a9
    else:
        gl.static_assert(MT == 4)
        even, odd = gl.split(gl.reshape(body, [G, 2, 2]))      # columns 0 2 | 1 3
        a0, a2 = gl.split(even)
        a1, a3 = gl.split(odd)
        a4 = gl.convert_layout(a8, a0.type.layout)
        a5 = gl.convert_layout(a9, a0.type.layout)
        return a0, a1, a2, a3, a4, a5, a4, a5, a4, a5


@gluon.jit
def _conv_row_tile(
    x_ptr, w_ptr, conv_bias_ptr, bias_ptr, scale_ptr,
    n, oh, col0, c_block, offs_c, c_mask, K_total, W, stride_xn, stride_xc, stride_xh, has_conv_bias,
    L3: gl.constexpr, LH: gl.constexpr, MT: gl.constexpr, BLOCK_C: gl.constexpr, G: gl.constexpr,
    X_ALIGNED: gl.constexpr,
):
    """sigmoid(((conv(x, w) + conv_bias) + bias) * scale) for [BLOCK_C, G, MT] outputs of row
    oh (columns col0[g] + j), fp32. Entries past C_out hold garbage: callers mask.

    The launcher's promise (rules.fma_conv_config): an unpadded 3 x 3 kernel at unit stride
    and dilation over adjacent columns (x.stride(3) == 1), and every column window inside x
    (the last column tile is shifted left, _program_row_tile) unless X_ALIGNED. So the inner
    loop has no bounds tests: per (input channel, kernel row) one base address and MT + 2 loads
    at constant offsets, or (X_ALIGNED) MT / 4 + 1 vector loads under loop-invariant masks."""
    LX: gl.constexpr = gl.SliceLayout(0, L3)
    acc = gl.zeros([BLOCK_C, G, MT], gl.float32, L3)
    if X_ALIGNED:
        # The aligned flavour's promise (rules.fma_x_aligned): x 16-byte aligned, W and x's
        # strides multiples of 16, so col0 (a multiple of MT) starts a 16-byte vector. A thread's
        # MT values are then MT // 4 vector loads and its 2-column halo one, instead of MT + 2
        # scalar loads. Tiles are not shifted: a vector from W on is not loaded (W is a multiple
        # of MT, so a vector lies inside the row or past it), nor is the halo of the row's last
        # vector; the zeros in their place reach only outputs from W_out on, which the callers drop.
        row = x_ptr + (n.to(gl.int64) * stride_xn + oh * stride_xh)
        x_cols = row + gl.expand_dims(col0, 1) + gl.expand_dims(gl.arange(0, MT, layout=gl.SliceLayout(0, LX)), 0)
        body_mask = gl.expand_dims(col0 < W, 1)
        halo_col = gl.convert_layout(col0, gl.SliceLayout(1, LH)) + MT
        x_halo = row + gl.expand_dims(halo_col, 1) + gl.expand_dims(gl.arange(0, 2, layout=gl.SliceLayout(0, LH)), 0)
        halo_mask = gl.expand_dims(halo_col < W, 1)
    else:
        x_cols = x_ptr + n.to(gl.int64) * stride_xn + oh * stride_xh + col0
    # The weight packed per channel block, [K_total, BLOCK_C] each (channels past C_out zero):
    # a tap's CT channels are one 16-byte load, and a warp's channels one 128-byte line. In
    # the op's [C_out, K_total] layout each of the 8 channel rows a warp reads per tap was its
    # own line: 36 scalar loads of 8 lines per input channel held the first version of this
    # kernel at ~20% of the FP32 peak.
    c_local = gl.arange(0, BLOCK_C, layout=gl.SliceLayout(1, gl.SliceLayout(2, L3)))
    w_rows = w_ptr + c_block * (K_total * BLOCK_C) + c_local
    # Both pointers advance one input channel an iteration, so every load inside is at a
    # constant offset from them (computing the weight offsets from ci cost two integer
    # instructions per load).
    for _ in range(K_total // 9):
        for kh in gl.static_range(3):
            if X_ALIGNED:
                a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = _window_values(
                    gl.load(x_cols + kh * stride_xh, mask=body_mask, other=0.0),
                    gl.load(x_halo + kh * stride_xh, mask=halo_mask, other=0.0), MT)
            else:
                p = x_cols + kh * stride_xh
                a0 = gl.load(p)
                a1 = gl.load(p + 1)
                a2 = gl.load(p + 2)
                a3 = gl.load(p + 3)
                a4 = gl.load(p + 4)
                a5 = gl.load(p + 5)
                if MT == 8:
                    a6 = gl.load(p + 6)
                    a7 = gl.load(p + 7)
                    a8 = gl.load(p + 8)
                    a9 = gl.load(p + 9)
            for kw in gl.static_range(3):
                # The window shifted by kw: the thread's own registers, renamed.
                if MT == 8:
                    if kw == 0:
                        xs = _stack8(a0, a1, a2, a3, a4, a5, a6, a7)
                    elif kw == 1:
                        xs = _stack8(a1, a2, a3, a4, a5, a6, a7, a8)
                    else:
                        xs = _stack8(a2, a3, a4, a5, a6, a7, a8, a9)
                else:
                    if kw == 0:
                        xs = _stack4(a0, a1, a2, a3)
                    elif kw == 1:
                        xs = _stack4(a1, a2, a3, a4)
                    else:
                        xs = _stack4(a2, a3, a4, a5)
                xs = gl.convert_layout(xs, LX)
                wv = gl.load(w_rows + (kh * 3 + kw) * BLOCK_C)
                acc = gl.fma(gl.expand_dims(gl.expand_dims(wv, 1), 2), gl.expand_dims(xs, 0), acc)
        x_cols += stride_xc
        if X_ALIGNED:
            x_halo += stride_xc
        w_rows += 9 * BLOCK_C
    conv_bias = gl.load(conv_bias_ptr + offs_c, mask=c_mask & (has_conv_bias != 0), other=0.0)
    bias = gl.load(bias_ptr + offs_c, mask=c_mask, other=0.0)
    scale = gl.load(scale_ptr + offs_c, mask=c_mask, other=0.0)
    mul = scale * -1.4426950408889634  # -log2(e)
    add = (conv_bias + bias) * mul
    mul3 = gl.expand_dims(gl.expand_dims(mul, 1), 2)
    add3 = gl.expand_dims(gl.expand_dims(add, 1), 2)
    return _sigmoid_of_log2(acc * mul3 + add3)


@gluon.jit
def _tile_start(first_col, W_out, BLOCK_W: gl.constexpr, X_ALIGNED: gl.constexpr):
    """The first column a row tile computes (_program_row_tile)."""
    if X_ALIGNED:
        return first_col
    else:
        return gl.minimum(first_col, W_out - BLOCK_W)


@gluon.jit
def _own_columns(ow, first_col, W_out, X_ALIGNED: gl.constexpr):
    """Which of a row tile's columns ow (from _tile_start on) are its own: a shifted tile
    repeats the columns before first_col, an aligned one runs past W_out."""
    if X_ALIGNED:
        return ow < W_out
    else:
        return ow >= first_col


@gluon.jit
def _program_row_tile(x_ptr, w_ptr, conv_bias_ptr, bias_ptr, scale_ptr, C_out, W, W_out, K_total,
                      stride_xn, stride_xc, stride_xh, num_th, num_tw, num_c_blocks, has_conv_bias,
                      BLOCK_H: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_C: gl.constexpr,
                      CT: gl.constexpr, MT: gl.constexpr, TC: gl.constexpr, WARPS: gl.constexpr,
                      X_ALIGNED: gl.constexpr):
    """The program's (sample, output row, column block, channel block), numbered as the twins'
    _tile_coords numbers them, and its [BLOCK_C, G, MT] values (_conv_row_tile). Returns the
    values, n, oh, tw, c_block, the mask of the tile's own columns [G, MT], the channel indices
    and their mask."""
    # BLOCK_H, BLOCK_W and BLOCK_C follow from the layout; they are constexprs so that the
    # build's table describes the tiles as it does the twins' (one output row, G * MT columns).
    gl.static_assert(BLOCK_H == 1)
    gl.static_assert(BLOCK_W == (32 // TC) * WARPS * MT)
    gl.static_assert(BLOCK_C == CT * TC)
    G: gl.constexpr = (32 // TC) * WARPS
    L3: gl.constexpr = gl.BlockedLayout([CT, 1, MT], [TC, 32 // TC, 1], [1, WARPS, 1], [2, 1, 0])
    LX: gl.constexpr = gl.SliceLayout(0, L3)
    # The 2-column halo of each thread's MT columns, held by the same threads (X_ALIGNED).
    LH: gl.constexpr = gl.SliceLayout(0, gl.BlockedLayout([CT, 1, 2], [TC, 32 // TC, 1], [1, WARPS, 1], [2, 1, 0]))
    pid = gl.program_id(0)
    c_block = pid % num_c_blocks
    rest = pid // num_c_blocks
    tw = rest % num_tw
    rest = rest // num_tw
    n = rest // num_th
    oh = rest % num_th
    # Unless X_ALIGNED, the last column tile starts early enough to end at W_out (the launcher's
    # promise: W_out >= BLOCK_W), so every column window lies inside x; its columns that the
    # tile before it covers are computed again and dropped by the callers' masks (first_col).
    # X_ALIGNED tiles stay on their vector boundaries, their loads past W masked off
    # (_conv_row_tile), and the callers drop columns from W_out on.
    first_col = tw * (G * MT)
    tile_col = _tile_start(first_col, W_out, G * MT, X_ALIGNED)
    col0 = tile_col + gl.arange(0, G, layout=gl.SliceLayout(1, LX)) * MT
    ow = gl.expand_dims(col0, 1) + gl.expand_dims(gl.arange(0, MT, layout=gl.SliceLayout(0, LX)), 0)
    offs_c = c_block * BLOCK_C + gl.arange(0, BLOCK_C, layout=gl.SliceLayout(1, gl.SliceLayout(2, L3)))
    c_mask = offs_c < C_out
    v = _conv_row_tile(x_ptr, w_ptr, conv_bias_ptr, bias_ptr, scale_ptr, n, oh, col0, c_block, offs_c, c_mask,
                       K_total, W, stride_xn, stride_xc, stride_xh, has_conv_bias, L3, LH, MT, BLOCK_C, G, X_ALIGNED)
    return v, n, oh, tw, c_block, _own_columns(ow, first_col, W_out, X_ALIGNED), offs_c, c_mask


@gluon.jit
def _store_row_tile(out_ptr, v, n, c_block, oh, tw, C_out, H_out, W_out,
                    BLOCK_C: gl.constexpr, BLOCK_W: gl.constexpr, WARPS: gl.constexpr, X_ALIGNED: gl.constexpr):
    """Stores the [BLOCK_C, G, MT] values of output row oh into out [N, C_out, H_out * W_out]:
    the tile's own columns, channels below C_out. In the compute layout a warp holds 8 channels
    x 4 column groups, so one store instruction writes 32 floats into 32 sectors (the first
    version of the normalize pass ran at 28% of the peak against the statistics pass's 49%).
    Converted (through shared memory) to runs of BLOCK_W columns of one channel a warp, each
    instruction writes adjacent floats. A 64-bit base for the (sample, channel block), 32-bit
    offsets within it (the launcher keeps C_out * H_out * W_out below 2^31)."""
    LS: gl.constexpr = gl.BlockedLayout([1, BLOCK_W // 32], [1, 32], [WARPS, 1], [1, 0])
    values = gl.convert_layout(gl.reshape(v, [BLOCK_C, BLOCK_W]), LS)
    first_col = tw * BLOCK_W
    ow = _tile_start(first_col, W_out, BLOCK_W, X_ALIGNED) + gl.arange(0, BLOCK_W, layout=gl.SliceLayout(0, LS))
    c_local = gl.arange(0, BLOCK_C, layout=gl.SliceLayout(1, LS))
    hw = H_out * W_out
    base = (n.to(gl.int64) * C_out + c_block * BLOCK_C) * hw
    offs = base + (gl.expand_dims(c_local * hw, 1) + gl.expand_dims(oh * W_out + ow, 0))
    mask = gl.expand_dims(c_block * BLOCK_C + c_local < C_out, 1) & gl.expand_dims(
        _own_columns(ow, first_col, W_out, X_ALIGNED), 0)
    gl.store(out_ptr + offs, values.to(out_ptr.dtype.element_ty), mask=mask)


@gluon.jit
def conv3x3_fma_stats_kernel(
    x_ptr,          # [N, C_in, H, W], strided
    w_ptr,          # [num_c_blocks, C_in*3*3, BLOCK_C]: the weight packed per channel block,
                    # 16-byte aligned, channels past C_out zero (the launcher packs it)
    conv_bias_ptr,  # [C_out]; read only if has_conv_bias
    bias_ptr,       # [C_out]
    scale_ptr,      # [C_out]
    part_mean_ptr,  # [N, C_out, num_th * num_tw] fp32, out
    part_m2_ptr,    # [N, C_out, num_th * num_tw] fp32, out
    v_ptr,          # [N, C_out, H_out*W_out] fp32, out if STORE_V: the values to normalize
    C_out, H, W, H_out, W_out, KH, KW, K_total,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    num_th, num_tw, num_c_blocks, has_conv_bias,
    BLOCK_H: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_C: gl.constexpr,
    CT: gl.constexpr, MT: gl.constexpr, TC: gl.constexpr, WARPS: gl.constexpr, STORE_V: gl.constexpr,
    X_ALIGNED: gl.constexpr,
):
    v, n, oh, tw, c_block, own, offs_c, c_mask = _program_row_tile(
        x_ptr, w_ptr, conv_bias_ptr, bias_ptr, scale_ptr, C_out, W, W_out, K_total, stride_xn, stride_xc, stride_xh,
        num_th, num_tw, num_c_blocks, has_conv_bias, BLOCK_H, BLOCK_W, BLOCK_C, CT, MT, TC, WARPS, X_ALIGNED)
    # Each channel's mean and M2 over the tile's valid columns (the twins' _store_tile_stats:
    # the tile's own mean first, then squared deviations from it).
    p_mask = gl.expand_dims(own, 0)
    count = gl.minimum(W_out - tw * BLOCK_W, BLOCK_W).to(gl.float32)
    tile_mean = gl.sum(gl.sum(gl.where(p_mask, v, 0.0), axis=2), axis=1) / count
    dev = gl.where(p_mask, v - gl.expand_dims(gl.expand_dims(tile_mean, 1), 2), 0.0)
    tile_m2 = gl.sum(gl.sum(dev * dev, axis=2), axis=1)
    part = (n.to(gl.int64) * C_out + offs_c) * (num_th * num_tw) + oh * num_tw + tw
    gl.store(part_mean_ptr + part, tile_mean, mask=c_mask)
    gl.store(part_m2_ptr + part, tile_m2, mask=c_mask)
    if STORE_V:
        _store_row_tile(v_ptr, v, n, c_block, oh, tw, C_out, H_out, W_out, BLOCK_C, BLOCK_W, WARPS, X_ALIGNED)


@gluon.jit
def conv3x3_fma_norm_kernel(
    x_ptr,          # [N, C_in, H, W], strided
    w_ptr,          # [num_c_blocks, C_in*3*3, BLOCK_C]: the weight packed per channel block,
                    # 16-byte aligned, channels past C_out zero (the launcher packs it)
    conv_bias_ptr,  # [C_out]; read only if has_conv_bias
    bias_ptr,       # [C_out]
    scale_ptr,      # [C_out]
    gn_weight_ptr,  # [C_out]; read only if has_gn_weight
    gn_bias_ptr,    # [C_out]; read only if has_gn_bias
    stats_ptr,      # [N, G, 2] fp32 (mean, rstd)
    y_ptr,          # [N, C_out, H_out*W_out], contiguous, out
    C_out, H, W, H_out, W_out, KH, KW, K_total,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    num_th, num_tw, num_c_blocks, has_conv_bias,
    num_groups, channels_per_group, has_gn_weight, has_gn_bias,
    BLOCK_H: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_C: gl.constexpr,
    CT: gl.constexpr, MT: gl.constexpr, TC: gl.constexpr, WARPS: gl.constexpr, X_ALIGNED: gl.constexpr,
):
    v, n, oh, tw, c_block, own, offs_c, c_mask = _program_row_tile(
        x_ptr, w_ptr, conv_bias_ptr, bias_ptr, scale_ptr, C_out, W, W_out, K_total, stride_xn, stride_xc, stride_xh,
        num_th, num_tw, num_c_blocks, has_conv_bias, BLOCK_H, BLOCK_W, BLOCK_C, CT, MT, TC, WARPS, X_ALIGNED)
    # The twins' _store_normalized.
    stat = (n.to(gl.int64) * num_groups + offs_c // channels_per_group) * 2
    mean = gl.load(stats_ptr + stat, mask=c_mask, other=0.0)
    rstd = gl.load(stats_ptr + stat + 1, mask=c_mask, other=0.0)
    gamma = gl.load(gn_weight_ptr + offs_c, mask=c_mask & (has_gn_weight != 0), other=1.0)
    beta = gl.load(gn_bias_ptr + offs_c, mask=c_mask & (has_gn_bias != 0), other=0.0)
    y = (v - gl.expand_dims(gl.expand_dims(mean, 1), 2)) * gl.expand_dims(gl.expand_dims(rstd * gamma, 1), 2) \
        + gl.expand_dims(gl.expand_dims(beta, 1), 2)
    _store_row_tile(y_ptr, y, n, c_block, oh, tw, C_out, H_out, W_out, BLOCK_C, BLOCK_W, WARPS, X_ALIGNED)
