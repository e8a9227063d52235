"""Conv2d -> +bias -> *scale -> sigmoid -> GroupNorm as Triton kernels.

The single source of truth for fusedconv's GPU code: the AOT build compiles these functions
into cubins/PTX, the interpreter tests and the exported file launch them, and nothing else holds
kernel code. Four algorithms (rules.py picks one; docs/performance.md says when each wins):
  materialize: conv_stats_kernel (STORE_V: conv + epilogue per (sample, tile of output
     positions, channel block); each channel's tile mean and M2, and the fp32 values) ->
     group_stats_kernel -> group_norm_apply_kernel (normalizes the stored values: the conv
     paid once, y's bytes three times);
  recompute: conv_stats_kernel (statistics only) -> group_stats_kernel -> conv_norm_kernel
     (conv + epilogue again, normalized, y written once: the conv paid twice);
  channels_last: recompute over a channels-last copy of x (to_channels_last_kernel and
     pack_weight_kernel, then conv_cl_stats_kernel -> group_stats_kernel ->
     conv_cl_norm_kernel), whose conv tile gathers with 16-byte vector loads;
  resident: conv_resident_kernel, one launch, one program per (sample, group) holding the
     whole group in registers.
group_stats_kernel merges a group's tile partials in a fixed order (Chan's parallel variance:
exact, deterministic, never negative) into mean and rstd.

Index conventions shared by the conv kernels:
  x       [N, C_in, H, W]           any strides; the batch stride is 64-bit, the others 32-bit
  weight  [C_out, C_in * KH * KW]   contiguous
  y       [N, C_out, H_out * W_out] contiguous
  partial [N, C_out, TH * TW]       fp32 tile mean and M2, tiles row-major
  stats   [N, G, 2]                 fp32 (mean, rstd)
  one program per (n, BLOCK_H x BLOCK_W tile of output positions, channel block), channel
  block fastest so the programs that share an x tile run together and find it in L2.
  (The resident kernel holds [BLOCK_C channels, BLOCK_M positions] of one group instead.)
"""
import triton
import triton.language as tl


@triton.jit
def _sigmoid_of_log2(t):
    """sigmoid(z) given t = -z * log2(e), as 1 / sqrt(1 + 2^t)^2: on the GPU two MUFU
    instructions and two FP ops (2^t and the reciprocal square root are the approximate,
    flush-to-zero ones, within ~2 ulp; exp() and "/" cost ~13 instructions with their range
    fix-ups). Triton has no tl.sigmoid. 2^t = inf for very negative z gives rsqrt(inf) = 0,
    the right limit, so no clamping is needed."""
    r = tl.math.rsqrt(1.0 + tl.math.exp2(t))
    return r * r


@triton.jit
def _tf32_split(v):
    """v = hi + lo with hi holding TF32's 10 mantissa bits (truncated, so no rounding logic)
    and lo the exact fp32 remainder; the tensor cores read lo's top bits in turn."""
    hi = (v.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)  # -8192 = 0xFFFFE000
    # For v = +-inf, lo = inf - inf = NaN where the reference has +-inf: drop it (hi holds the
    # inf, and a NaN v stays NaN in hi unless its payload sits only in the 13 dropped bits,
    # which no NaN that torch produces does).
    lo = v - hi
    return hi, tl.where(lo == lo, lo, 0.0)


@triton.jit
def _tile_coords(num_th, num_tw, num_c_blocks):
    pid = tl.program_id(0)
    c_block = pid % num_c_blocks
    rest = pid // num_c_blocks
    tw = rest % num_tw
    rest = rest // num_tw
    return rest // num_th, rest % num_th, tw, c_block


@triton.jit
def _tile_positions(th, tw, H_out, W_out, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """A BLOCK_H x BLOCK_W tile of output positions, row-major: constexpr shifts, no runtime
    division, and a row of x per tap and channel is one contiguous run."""
    m = tl.arange(0, BLOCK_H * BLOCK_W)
    oh = th * BLOCK_H + m // BLOCK_W
    ow = tw * BLOCK_W + m % BLOCK_W
    return oh, ow, (oh < H_out) & (ow < W_out)


@triton.jit
def _channel_params(conv_bias_ptr, bias_ptr, scale_ptr, offs_c, c_mask, has_conv_bias):
    """The epilogue's per-channel fp32 vectors (mul, add) with sigmoid((conv + conv_bias +
    bias) * scale) = _sigmoid_of_log2(conv * mul + add): one FFMA per element instead of two
    adds and two multiplies. It rounds once where the reference rounds three times (~1 ulp of
    z, ~1e-7 of the output). A missing conv bias is a masked-off load (reads nothing, yields
    0): no extra variant."""
    conv_bias = tl.load(conv_bias_ptr + offs_c, mask=c_mask & (has_conv_bias != 0), other=0.0)
    bias = tl.load(bias_ptr + offs_c, mask=c_mask, other=0.0)
    scale = tl.load(scale_ptr + offs_c, mask=c_mask, other=0.0)
    mul = scale.to(tl.float32) * -1.4426950408889634  # -log2(e)
    return mul, (conv_bias.to(tl.float32) + bias.to(tl.float32)) * mul


@triton.jit
def _conv_k_step(
    acc, k0, x_sample, pos_off, ih0, iw0, w_ptr, offs_c, c_mask,
    H, W, KH, KW, K_total, inv_khw, inv_kw,
    stride_xc, stride_xh, stride_xw, dil_h, dil_w,
    BLOCK_K: tl.constexpr, TAPS: tl.constexpr, PRECISION: tl.constexpr,
):
    """acc[M, C] += im2col(x)[M, k0:k0+BLOCK_K] @ W^T[k0:k0+BLOCK_K, C]."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    if TAPS > 0:
        # An unpadded TAPS x TAPS kernel over clamped positions: k decodes by constants, and
        # every tap lies inside x, so only k past K_total is masked.
        ci = offs_k // (TAPS * TAPS)
        kh = offs_k % (TAPS * TAPS) // TAPS
        dh = kh * dil_h
        dw = offs_k % TAPS * dil_w
        x_mask = (offs_k < K_total)[None, :]
    else:
        # k -> (ci, kh, kw) by multiplying with a reciprocal instead of integer division (a
        # ~20-instruction sequence on the GPU). The distance of (k + 0.5) / d to an integer
        # is at least 0.5 / d, and a reciprocal within 2 ulp (plain "/", no slow-path call
        # like div_rn's) keeps the product's error below that while k < 2^21; the launcher
        # keeps K_total < 2^20.
        ci = ((offs_k.to(tl.float32) + 0.5) * inv_khw).to(tl.int32)
        khw = offs_k - ci * (KH * KW)
        kh = ((khw.to(tl.float32) + 0.5) * inv_kw).to(tl.int32)
        dh = kh * dil_h
        dw = (khw - kh * KW) * dil_w
        # One unsigned compare per axis, 0 <= ih < H and 0 <= iw < W, is the whole load mask:
        # k past K_total gets a row far outside x (as do positions past the tile's end, in
        # ih0).
        FAR: tl.constexpr = -(1 << 29)
        ih = ih0[:, None] + tl.where(offs_k < K_total, dh, FAR)[None, :]
        iw = iw0[:, None] + dw[None, :]
        x_mask = (ih.to(tl.uint32, bitcast=True) < H.to(tl.uint32)) & \
                 (iw.to(tl.uint32, bitcast=True) < W.to(tl.uint32))
    tap_off = ci * stride_xc + dh * stride_xh + dw * stride_xw
    x_tile = tl.load(x_sample + pos_off[:, None] + tap_off[None, :], mask=x_mask, other=0.0)
    w_tile = tl.load(w_ptr + offs_c[None, :] * K_total + offs_k[:, None],
                     mask=c_mask[None, :] & (offs_k < K_total)[:, None], other=0.0)
    return _dot_step(acc, x_tile, w_tile, PRECISION)


@triton.jit
def _dot_step(acc, x_tile, w_tile, PRECISION: tl.constexpr):
    """acc[M, C] += x_tile[M, K] @ w_tile[K, C] in the variant's precision."""
    if PRECISION == "tf32x3_split":
        # fp32-accurate on TF32 tensor cores: x*w ~ x_lo*w_hi + x_hi*w_lo + x_hi*w_hi
        # (x_lo*w_lo, ~2^-20 relative, dropped), small terms first. Cheaper than Triton's
        # "tf32x3", whose round-to-nearest split cost ~150 instructions per K step.
        x_hi, x_lo = _tf32_split(x_tile)
        w_hi, w_lo = _tf32_split(w_tile)
        acc = tl.dot(x_lo, w_hi, acc, input_precision="tf32")
        acc = tl.dot(x_hi, w_lo, acc, input_precision="tf32")
        acc = tl.dot(x_hi, w_hi, acc, input_precision="tf32")
    else:
        acc = tl.dot(x_tile, w_tile, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _tap_column(row_ptr, k: tl.constexpr, K_total, stride_xc, stride_xh, dil_h,
                TAPS: tl.constexpr, MASK_K: tl.constexpr):
    """im2col(x)[:, k] for one constant k of an unpadded TAPS x TAPS kernel with unit column
    stride and dilation: every position's load sits at an immediate offset (kw) from its
    (ci, kh) row, so the GPU computes no address per element (a [M, K] gather with runtime
    strides cost ~5 integer instructions per element)."""
    ci: tl.constexpr = k // (TAPS * TAPS)
    kh: tl.constexpr = k % (TAPS * TAPS) // TAPS
    kw: tl.constexpr = k % TAPS
    row = row_ptr + (ci * stride_xc + kh * dil_h * stride_xh)
    if MASK_K:
        return tl.load(row + kw, mask=k < K_total, other=0.0)
    else:
        return tl.load(row + kw)


@triton.jit
def _tap_pair(row_ptr, k: tl.constexpr, s: tl.constexpr, K_total, stride_xc, stride_xh, dil_h,
              TAPS: tl.constexpr, MASK_K: tl.constexpr):
    # [M, 2]: columns k, k + s
    return tl.join(_tap_column(row_ptr, k, K_total, stride_xc, stride_xh, dil_h, TAPS, MASK_K),
                   _tap_column(row_ptr, k + s, K_total, stride_xc, stride_xh, dil_h, TAPS, MASK_K))


@triton.jit
def _tap_quad(row_ptr, k: tl.constexpr, s: tl.constexpr, K_total, stride_xc, stride_xh, dil_h,
              TAPS: tl.constexpr, MASK_K: tl.constexpr):
    # [M, 2, 2]: [m, a, b] = column k + s * (2a + b)
    return tl.join(_tap_pair(row_ptr, k, 2 * s, K_total, stride_xc, stride_xh, dil_h, TAPS, MASK_K),
                   _tap_pair(row_ptr, k + s, 2 * s, K_total, stride_xc, stride_xh, dil_h, TAPS, MASK_K))


@triton.jit
def _tap_octet(row_ptr, k: tl.constexpr, s: tl.constexpr, K_total, stride_xc, stride_xh, dil_h,
               TAPS: tl.constexpr, MASK_K: tl.constexpr):
    # [M, 2, 2, 2]: [m, a, b, c] = column k + s * (4a + 2b + c)
    return tl.join(_tap_quad(row_ptr, k, 2 * s, K_total, stride_xc, stride_xh, dil_h, TAPS, MASK_K),
                   _tap_quad(row_ptr, k + s, 2 * s, K_total, stride_xc, stride_xh, dil_h, TAPS, MASK_K))


@triton.jit
def _conv_taps_k_step(acc, k0: tl.constexpr, row_ptr, w_rows, c_mask, K_total, stride_xc, stride_xh, dil_h,
                      BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, TAPS: tl.constexpr,
                      PRECISION: tl.constexpr, MASK_K: tl.constexpr):
    """acc[M, C] += im2col(x)[M, k0:k0+16] @ W^T[k0:k0+16, C] for a constant k0, built from
    16 column loads (_tap_column) joined into [M, 16]; the join tree's index order is
    k0 + 8a + 4b + 2c + d, i.e. row-major. MASK_K only where the step runs past K_total."""
    tl.static_assert(BLOCK_K == 16, "the column join tree builds 16 columns")
    x_tile = tl.join(_tap_octet(row_ptr, k0, 2, K_total, stride_xc, stride_xh, dil_h, TAPS, MASK_K),
                     _tap_octet(row_ptr, k0 + 1, 2, K_total, stride_xc, stride_xh, dil_h, TAPS, MASK_K))
    x_tile = tl.reshape(x_tile, (BLOCK_M, BLOCK_K))
    offs_k = k0 + tl.arange(0, BLOCK_K)
    if MASK_K:
        w_tile = tl.load(w_rows[None, :] + offs_k[:, None],
                         mask=c_mask[None, :] & (offs_k < K_total)[:, None], other=0.0)
    else:
        w_tile = tl.load(w_rows[None, :] + offs_k[:, None], mask=c_mask[None, :], other=0.0)
    return _dot_step(acc, x_tile, w_tile, PRECISION)


@triton.jit
def _conv_bias_scale_sigmoid_tile(
    x_ptr, w_ptr, conv_bias_ptr, bias_ptr, scale_ptr,
    n, oh, ow, p_mask, offs_c, c_mask,
    H, W, KH, KW, K_total,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    has_conv_bias,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, K_STEPS: tl.constexpr,
    TAPS: tl.constexpr, PRECISION: tl.constexpr,
):
    """sigmoid(((conv(x, w) + conv_bias) + bias) * scale) for BLOCK_M positions x BLOCK_C
    channels, in fp32, positions first. Entries outside p_mask/c_mask hold garbage: callers
    mask.

    Positions are the dot's M dimension, so that on sm_90 a 4-warp program's 128 positions
    are a warpgroup MMA (acc[C, M] with 32 channels as M ran 1.5-2x slower on the H200:
    docs/performance-log.md, v7). The first K_STEPS K steps are unrolled at compile time, so the
    loads of every step are in flight together (a runtime loop over the same steps ran up to
    2x slower at K = 72); the rest, if any, run in a runtime loop.

    TAPS > 0 is the launcher's promise of an unpadded TAPS x TAPS kernel (KH = KW = TAPS,
    padding 0) over columns of x that are adjacent in memory (x.stride(3) == 1, column
    dilation 1): positions past the output are clamped to its first one instead of masked, so
    every tap of every position lies inside x and loads need no bounds test (bounds tests
    and k decoding by reciprocals cost 1.2-1.6x at the benchmark shape, v7), and each tap's
    load is an immediate offset from its row (_tap_column)."""
    if TAPS > 0:
        oh = tl.where(p_mask, oh, 0)
        ow = tl.where(p_mask, ow, 0)
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_sample = x_ptr + n.to(tl.int64) * stride_xn
    pos_off = ih0 * stride_xh + iw0 * stride_xw
    FAR: tl.constexpr = -(1 << 29)  # as in _conv_k_step: positions past the tile fail the row test
    ih0 = tl.where(p_mask, ih0, FAR)
    inv_khw = 1.0 / (KH * KW).to(tl.float32)
    inv_kw = 1.0 / KW.to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    if TAPS > 0 and PRECISION != "tf32x3_split":
        row_ptr = x_sample + pos_off
        w_rows = w_ptr + offs_c * K_total
        for step in tl.static_range(K_STEPS):
            # A uniform branch per step: only a step that runs past K_total pays for masks.
            if (step + 1) * BLOCK_K <= K_total:
                acc = _conv_taps_k_step(acc, step * BLOCK_K, row_ptr, w_rows, c_mask, K_total,
                                        stride_xc, stride_xh, dil_h, BLOCK_M, BLOCK_K, TAPS, PRECISION, False)
            elif step * BLOCK_K < K_total:
                acc = _conv_taps_k_step(acc, step * BLOCK_K, row_ptr, w_rows, c_mask, K_total,
                                        stride_xc, stride_xh, dil_h, BLOCK_M, BLOCK_K, TAPS, PRECISION, True)
    else:
        for step in tl.static_range(K_STEPS):
            acc = _conv_k_step(acc, step * BLOCK_K, x_sample, pos_off, ih0, iw0, w_ptr, offs_c, c_mask,
                               H, W, KH, KW, K_total, inv_khw, inv_kw,
                               stride_xc, stride_xh, stride_xw, dil_h, dil_w, BLOCK_K, TAPS, PRECISION)
    for k0 in range(K_STEPS * BLOCK_K, K_total, BLOCK_K):
        acc = _conv_k_step(acc, k0, x_sample, pos_off, ih0, iw0, w_ptr, offs_c, c_mask,
                           H, W, KH, KW, K_total, inv_khw, inv_kw,
                           stride_xc, stride_xh, stride_xw, dil_h, dil_w, BLOCK_K, TAPS, PRECISION)
    mul, add = _channel_params(conv_bias_ptr, bias_ptr, scale_ptr, offs_c, c_mask, has_conv_bias)
    return _sigmoid_of_log2(acc * mul[None, :] + add[None, :])


@triton.jit
def _out_offsets(n, c_block, oh, ow, C_out, H_out, W_out, BLOCK_C: tl.constexpr):
    """Offsets into [N, C_out, H_out * W_out] of a tile's [positions, channels]: one 64-bit
    scalar for the (sample, channel block) and 32-bit offsets within it (the launcher keeps
    C_out * H_out * W_out below 2^31), so no element needs 64-bit arithmetic of its own."""
    hw = H_out * W_out
    base = (n.to(tl.int64) * C_out + c_block * BLOCK_C) * hw
    return base + (tl.arange(0, BLOCK_C)[None, :] * hw + (oh * W_out + ow)[:, None])


@triton.jit
def _store_tile_stats(v, n, th, tw, p_mask, offs_c, c_mask, part_mean_ptr, part_m2_ptr,
                      C_out, H_out, W_out, num_th, num_tw, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Each channel's mean and M2 over the tile's valid positions, into the partials. Two passes
    over registers, the tile's own mean first and then squared deviations from it, so M2 never
    suffers the cancellation of sum(v^2) - sum(v)^2 / n."""
    count = (tl.minimum(H_out - th * BLOCK_H, BLOCK_H) * tl.minimum(W_out - tw * BLOCK_W, BLOCK_W)).to(tl.float32)
    tile_mean = tl.sum(tl.where(p_mask[:, None], v, 0.0), axis=0) / count
    dev = tl.where(p_mask[:, None], v - tile_mean[None, :], 0.0)
    tile_m2 = tl.sum(dev * dev, axis=0)
    out = (n.to(tl.int64) * C_out + offs_c) * (num_th * num_tw) + th * num_tw + tw
    tl.store(part_mean_ptr + out, tile_mean, mask=c_mask)
    tl.store(part_m2_ptr + out, tile_m2, mask=c_mask)


@triton.jit
def _store_normalized(v, n, c_block, oh, ow, p_mask, offs_c, c_mask, stats_ptr, gn_weight_ptr, gn_bias_ptr,
                      y_ptr, C_out, H_out, W_out, num_groups, channels_per_group, has_gn_weight, has_gn_bias,
                      BLOCK_C: tl.constexpr):
    """y = GroupNorm(v) for a tile, with its group's (mean, rstd) from group_stats_kernel."""
    stat = (n.to(tl.int64) * num_groups + offs_c // channels_per_group) * 2
    mean = tl.load(stats_ptr + stat, mask=c_mask, other=0.0)
    rstd = tl.load(stats_ptr + stat + 1, mask=c_mask, other=0.0)
    gamma = tl.load(gn_weight_ptr + offs_c, mask=c_mask & (has_gn_weight != 0), other=1.0).to(tl.float32)
    beta = tl.load(gn_bias_ptr + offs_c, mask=c_mask & (has_gn_bias != 0), other=0.0).to(tl.float32)
    y = (v - mean[None, :]) * (rstd * gamma)[None, :] + beta[None, :]
    tl.store(y_ptr + _out_offsets(n, c_block, oh, ow, C_out, H_out, W_out, BLOCK_C),
             y.to(y_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask[None, :])


@triton.jit
def conv_stats_kernel(
    x_ptr,          # [N, C_in, H, W], strided
    w_ptr,          # [C_out, C_in*KH*KW], contiguous
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
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    K_STEPS: tl.constexpr, TAPS: tl.constexpr, PRECISION: tl.constexpr, STORE_V: tl.constexpr,
):
    n, th, tw, c_block = _tile_coords(num_th, num_tw, num_c_blocks)
    oh, ow, p_mask = _tile_positions(th, tw, H_out, W_out, BLOCK_H, BLOCK_W)
    offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C_out
    v = _conv_bias_scale_sigmoid_tile(
        x_ptr, w_ptr, conv_bias_ptr, bias_ptr, scale_ptr,
        n, oh, ow, p_mask, offs_c, c_mask,
        H, W, KH, KW, K_total,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        has_conv_bias, BLOCK_H * BLOCK_W, BLOCK_C, BLOCK_K, K_STEPS, TAPS, PRECISION)
    _store_tile_stats(v, n, th, tw, p_mask, offs_c, c_mask, part_mean_ptr, part_m2_ptr,
                      C_out, H_out, W_out, num_th, num_tw, BLOCK_H, BLOCK_W)
    if STORE_V:
        tl.store(v_ptr + _out_offsets(n, c_block, oh, ow, C_out, H_out, W_out, BLOCK_C), v,
                 mask=p_mask[:, None] & c_mask[None, :])


@triton.jit
def _tile_count(tile, H_out, W_out, num_tw, tile_h, tile_w):
    """Output positions inside the tile_h x tile_w tile numbered `tile` (row-major tiles)."""
    rows = tl.minimum(H_out - (tile // num_tw) * tile_h, tile_h)
    cols = tl.minimum(W_out - (tile % num_tw) * tile_w, tile_w)
    return (rows * cols).to(tl.float32)


@triton.jit
def group_stats_kernel(
    part_mean_ptr,  # [N, C_out, num_th * num_tw] fp32
    part_m2_ptr,    # [N, C_out, num_th * num_tw] fp32
    stats_ptr,      # [N, G, 2] fp32, out: (mean, rstd)
    channels_per_group, H_out, W_out, num_th, num_tw, tile_h, tile_w, eps,
    BLOCK: tl.constexpr,
):
    # One program per (n, group). A group's channels are adjacent, so its partials are one
    # contiguous run of channels_per_group * num_th * num_tw entries.
    pid = tl.program_id(0)
    num_tiles = num_th * num_tw
    run = channels_per_group * num_tiles
    base = pid.to(tl.int64) * run
    total = (channels_per_group * H_out * W_out).to(tl.float32)

    weighted = tl.zeros((BLOCK,), dtype=tl.float32)
    for i0 in range(0, run, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        mask = i < run
        count = _tile_count(i % num_tiles, H_out, W_out, num_tw, tile_h, tile_w)
        weighted += tl.where(mask, count * tl.load(part_mean_ptr + base + i, mask=mask, other=0.0), 0.0)
    mean = tl.sum(weighted, axis=0) / total

    # Chan et al.: M2 = sum(M2_i) + sum(n_i * (mean_i - mean)^2); every term is >= 0.
    m2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for i0 in range(0, run, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        mask = i < run
        count = _tile_count(i % num_tiles, H_out, W_out, num_tw, tile_h, tile_w)
        d = tl.load(part_mean_ptr + base + i, mask=mask, other=0.0) - mean
        part = tl.load(part_m2_ptr + base + i, mask=mask, other=0.0) + count * d * d
        m2 += tl.where(mask, part, 0.0)
    var = tl.sum(m2, axis=0) / total
    rstd = 1.0 / tl.sqrt_rn(var + eps)
    tl.store(stats_ptr + pid.to(tl.int64) * 2, mean)
    tl.store(stats_ptr + pid.to(tl.int64) * 2 + 1, rstd)


@triton.jit
def conv_norm_kernel(
    x_ptr,          # [N, C_in, H, W], strided
    w_ptr,          # [C_out, C_in*KH*KW], contiguous
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
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    K_STEPS: tl.constexpr, TAPS: tl.constexpr, PRECISION: tl.constexpr,
):
    n, th, tw, c_block = _tile_coords(num_th, num_tw, num_c_blocks)
    oh, ow, p_mask = _tile_positions(th, tw, H_out, W_out, BLOCK_H, BLOCK_W)
    offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C_out
    v = _conv_bias_scale_sigmoid_tile(
        x_ptr, w_ptr, conv_bias_ptr, bias_ptr, scale_ptr,
        n, oh, ow, p_mask, offs_c, c_mask,
        H, W, KH, KW, K_total,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        has_conv_bias, BLOCK_H * BLOCK_W, BLOCK_C, BLOCK_K, K_STEPS, TAPS, PRECISION)
    _store_normalized(v, n, c_block, oh, ow, p_mask, offs_c, c_mask, stats_ptr, gn_weight_ptr, gn_bias_ptr,
                      y_ptr, C_out, H_out, W_out, num_groups, channels_per_group, has_gn_weight, has_gn_bias,
                      BLOCK_C)


@triton.jit
def group_norm_apply_kernel(
    v_ptr,          # [N * C_out, HW_out] fp32: conv_stats_kernel's stored values
    stats_ptr,      # [N, G, 2] fp32 (mean, rstd)
    gn_weight_ptr,  # [C_out]; read only if has_gn_weight
    gn_bias_ptr,    # [C_out]; read only if has_gn_bias
    y_ptr,          # [N * C_out, HW_out], out; may alias v_ptr (fp32): each element is read
                    # and then written by the same thread
    C_out, HW_out, num_groups, channels_per_group, num_blocks, has_gn_weight, has_gn_bias,
    BLOCK: tl.constexpr,
):
    # One program per BLOCK positions of one (n, c) row: the row's mean, rstd, gamma and beta
    # are scalars, so the inner work is one fused multiply-add per element.
    pid = tl.program_id(0)
    row = pid // num_blocks
    offs = (pid % num_blocks) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW_out
    c = row % C_out
    stat = ((row // C_out).to(tl.int64) * num_groups + c // channels_per_group) * 2
    mean = tl.load(stats_ptr + stat)
    rstd = tl.load(stats_ptr + stat + 1)
    gamma = tl.load(gn_weight_ptr + c, mask=has_gn_weight != 0, other=1.0).to(tl.float32)
    beta = tl.load(gn_bias_ptr + c, mask=has_gn_bias != 0, other=0.0).to(tl.float32)
    base = row.to(tl.int64) * HW_out
    v = tl.load(v_ptr + base + offs, mask=mask, other=0.0)
    y = (v - mean) * (rstd * gamma) + beta
    tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# --- Channels-last algorithm ---------------------------------------------------------------
# x is first copied to a channels-last workspace with the channels padded to a multiple of 8,
# and the weight into the matching K order. Every im2col row of a tile then comes from 16-byte
# vector loads (8 channels of one tap at one position) at offsets that keep their alignment
# through every tap, and the tensor cores read the tile from shared memory: the NCHW gather
# above spends ~7 instructions on each x element instead (docs/performance-log.md, v9).


@triton.jit
def to_channels_last_kernel(
    x_ptr,   # [N, C_in, H, W], strided
    xt_ptr,  # [N, H, W, 8 * num_chunks], contiguous, out; channels past C_in are written as 0
    C_in, H, W, stride_xn, stride_xc, stride_xh, stride_xw, num_chunks, num_w_blocks,
    BLOCK: tl.constexpr,
):
    # One program per (n, row, BLOCK columns), looping over chunks of 8 channels: loads run
    # along a row of x, stores along each position's channels.
    pid = tl.program_id(0)
    row = pid // num_w_blocks  # n * H + h
    offs_w = (pid % num_w_blocks) * BLOCK + tl.arange(0, BLOCK)
    w_mask = offs_w < W
    src = x_ptr + (row // H).to(tl.int64) * stride_xn + (row % H) * stride_xh
    dst = xt_ptr + row.to(tl.int64) * W * (num_chunks * 8)
    for chunk in range(0, num_chunks):
        offs_c = chunk * 8 + tl.arange(0, 8)
        v = tl.load(src + offs_c[:, None] * stride_xc + offs_w[None, :] * stride_xw,
                    mask=(offs_c < C_in)[:, None] & w_mask[None, :], other=0.0)
        tl.store(dst + offs_w[:, None] * (num_chunks * 8) + offs_c[None, :], tl.trans(v), mask=w_mask[:, None])


@triton.jit
def pack_weight_kernel(
    w_ptr,   # [C_out, C_in, KH * KW], contiguous
    wk_ptr,  # [C_out, num_chunks, TP, 8], out; TP = KH * KW rounded up to even, zero padded
    C_in, KT, TP, num_chunks,
    BLOCK: tl.constexpr,
):
    # One program per (output channel, chunk of 8 input channels); K order (chunk, tap, channel)
    # is the channels-last conv tile's, two taps of one chunk per K step of 16.
    pid = tl.program_id(0)
    co = pid // num_chunks
    chunk = pid % num_chunks
    ci = chunk * 8 + tl.arange(0, 8)
    src = w_ptr + co.to(tl.int64) * C_in * KT
    dst = wk_ptr + pid.to(tl.int64) * TP * 8
    for t0 in range(0, TP, BLOCK):
        tap = t0 + tl.arange(0, BLOCK)
        v = tl.load(src + ci[None, :] * KT + tap[:, None], mask=(ci < C_in)[None, :] & (tap < KT)[:, None], other=0.0)
        tl.store(dst + tap[:, None] * 8 + tl.arange(0, 8)[None, :], v, mask=(tap < TP)[:, None])


@triton.jit
def _cl_k_step(acc, tap0, x_chunk, w_step, pos_off, ih0, iw0, offs_c, c_mask,
               H, W, KW, K_taps, C_pad, KP, dil_h, dil_w,
               BLOCK_K: tl.constexpr, TAPS: tl.constexpr, PRECISION: tl.constexpr):
    """acc[M, C] += xt[M, taps tap0, tap0+1 (x 8 channels)] @ wk[those 16 k's, C]."""
    tl.static_assert(BLOCK_K == 16, "a K step is two taps of 8 channels, as pack_weight_kernel packs them")
    kl = tl.arange(0, BLOCK_K)
    tap = tap0 + kl // 8  # constant over each run of 8 k's, so the loads stay 16-byte vectors
    kh = tap // KW
    dh = kh * dil_h
    dw = (tap - kh * KW) * dil_w
    if TAPS > 0:
        # Unpadded: positions are clamped into the output, so every tap lies inside x.
        ok = tl.broadcast_to((tap < K_taps)[None, :], (ih0.shape[0], BLOCK_K))
    else:
        ih = ih0[:, None] + dh[None, :]
        iw = iw0[:, None] + dw[None, :]
        ok = (ih.to(tl.uint32, bitcast=True) < H.to(tl.uint32)) & \
             (iw.to(tl.uint32, bitcast=True) < W.to(tl.uint32)) & (tap < K_taps)[None, :]
    x_tile = tl.load(x_chunk + pos_off[:, None] + ((dh * W + dw) * C_pad + kl % 8)[None, :], mask=ok, other=0.0)
    w_tile = tl.load(w_step + tap0 * 8 + kl[:, None] + offs_c[None, :] * KP,
                     mask=c_mask[None, :] & (tap < K_taps)[:, None], other=0.0)
    return _dot_step(acc, x_tile, w_tile, PRECISION)


@triton.jit
def _cl_chunk(acc, chunk, x_sample, wk_ptr, pos_off, ih0, iw0, offs_c, c_mask,
              H, W, KH, KW, C_pad, KP, dil_h, dil_w,
              BLOCK_K: tl.constexpr, K_STEPS: tl.constexpr, TAPS: tl.constexpr, PRECISION: tl.constexpr):
    """Every tap of input channels 8 * chunk .. 8 * chunk + 7."""
    x_chunk = x_sample + chunk * 8
    if TAPS > 0:
        w_step = wk_ptr + chunk * ((TAPS * TAPS + 1) // 2 * 16)
        # A runtime loop without software pipelining ran fastest on the H200 (a static unroll
        # or cp.async stages of 2-4 were 7-35% slower, docs/performance-log.md, v9).
        for tap0 in tl.range(0, TAPS * TAPS, 2, num_stages=1):
            acc = _cl_k_step(acc, tap0, x_chunk, w_step, pos_off, ih0, iw0, offs_c, c_mask,
                             H, W, TAPS, TAPS * TAPS, C_pad, KP, dil_h, dil_w, BLOCK_K, TAPS, PRECISION)
    else:
        w_step = wk_ptr + chunk * ((KH * KW + 1) // 2 * 16)
        for step in tl.static_range(K_STEPS):
            acc = _cl_k_step(acc, 2 * step, x_chunk, w_step, pos_off, ih0, iw0, offs_c, c_mask,
                             H, W, KW, KH * KW, C_pad, KP, dil_h, dil_w, BLOCK_K, TAPS, PRECISION)
        for tap0 in range(2 * K_STEPS, KH * KW, 2):
            acc = _cl_k_step(acc, tap0, x_chunk, w_step, pos_off, ih0, iw0, offs_c, c_mask,
                             H, W, KW, KH * KW, C_pad, KP, dil_h, dil_w, BLOCK_K, TAPS, PRECISION)
    return acc


@triton.jit
def _cl_conv_bias_scale_sigmoid_tile(
    xt_ptr, wk_ptr, conv_bias_ptr, bias_ptr, scale_ptr,
    n, oh, ow, p_mask, offs_c, c_mask,
    H, W, KH, KW, num_chunks, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, has_conv_bias,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, K_STEPS: tl.constexpr,
    TAPS: tl.constexpr, PRECISION: tl.constexpr,
):
    """_conv_bias_scale_sigmoid_tile over the channels-last workspace: the same values, with
    K ordered (chunk of 8 channels, tap, channel) and two taps per K step of 16."""
    if TAPS > 0:
        oh = tl.where(p_mask, oh, 0)
        ow = tl.where(p_mask, ow, 0)
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    C_pad = num_chunks * 8  # a multiple of 8 the compiler can see: 16-byte vector loads
    x_sample = xt_ptr + n.to(tl.int64) * H * W * C_pad
    pos_off = (ih0 * W + iw0) * C_pad
    if TAPS == 0:
        FAR: tl.constexpr = -(1 << 29)  # positions past the tile fail the row test
        ih0 = tl.where(p_mask, ih0, FAR)
    if TAPS > 0:
        KP = num_chunks * ((TAPS * TAPS + 1) // 2 * 16)
    else:
        KP = num_chunks * ((KH * KW + 1) // 2 * 16)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    acc = _cl_chunk(acc, 0, x_sample, wk_ptr, pos_off, ih0, iw0, offs_c, c_mask, H, W, KH, KW, C_pad, KP,
                    dil_h, dil_w, BLOCK_K, K_STEPS, TAPS, PRECISION)
    for chunk in range(1, num_chunks):
        acc = _cl_chunk(acc, chunk, x_sample, wk_ptr, pos_off, ih0, iw0, offs_c, c_mask, H, W, KH, KW, C_pad, KP,
                        dil_h, dil_w, BLOCK_K, K_STEPS, TAPS, PRECISION)
    mul, add = _channel_params(conv_bias_ptr, bias_ptr, scale_ptr, offs_c, c_mask, has_conv_bias)
    return _sigmoid_of_log2(acc * mul[None, :] + add[None, :])


@triton.jit
def _cl_program_tile(
    xt_ptr, wk_ptr, conv_bias_ptr, bias_ptr, scale_ptr,
    C_out, H, W, H_out, W_out, KH, KW, num_chunks, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    num_th, num_tw, num_c_blocks, has_conv_bias,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    K_STEPS: tl.constexpr, TAPS: tl.constexpr, PRECISION: tl.constexpr, UNIT: tl.constexpr,
):
    """This program's tile of sigmoid values and where it lies, for both channels-last passes.
    With UNIT the launcher has checked one chunk of input channels, one channel block and unit
    stride and dilation; as constants they fold the tile's address arithmetic, as Triton's JIT
    does for arguments equal to 1 (the AOT images ran 17% behind the JIT without them,
    docs/performance-log.md, v10)."""
    if UNIT:
        num_chunks, num_c_blocks, stride_h, stride_w, dil_h, dil_w = 1, 1, 1, 1, 1, 1
    n, th, tw, c_block = _tile_coords(num_th, num_tw, num_c_blocks)
    oh, ow, p_mask = _tile_positions(th, tw, H_out, W_out, BLOCK_H, BLOCK_W)
    offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C_out
    v = _cl_conv_bias_scale_sigmoid_tile(
        xt_ptr, wk_ptr, conv_bias_ptr, bias_ptr, scale_ptr, n, oh, ow, p_mask, offs_c, c_mask,
        H, W, KH, KW, num_chunks, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, has_conv_bias,
        BLOCK_H * BLOCK_W, BLOCK_C, BLOCK_K, K_STEPS, TAPS, PRECISION)
    return v, n, th, tw, c_block, oh, ow, p_mask, offs_c, c_mask


@triton.jit
def conv_cl_stats_kernel(
    xt_ptr,         # [N, H, W, 8 * num_chunks], contiguous, 16-byte aligned (to_channels_last_kernel)
    wk_ptr,         # [C_out, num_chunks, TP, 8], contiguous, 16-byte aligned (pack_weight_kernel)
    conv_bias_ptr,  # [C_out]; read only if has_conv_bias
    bias_ptr,       # [C_out]
    scale_ptr,      # [C_out]
    part_mean_ptr,  # [N, C_out, num_th * num_tw] fp32, out
    part_m2_ptr,    # [N, C_out, num_th * num_tw] fp32, out
    C_out, H, W, H_out, W_out, KH, KW, num_chunks,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    num_th, num_tw, num_c_blocks, has_conv_bias,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    K_STEPS: tl.constexpr, TAPS: tl.constexpr, PRECISION: tl.constexpr, UNIT: tl.constexpr,
):
    v, n, th, tw, c_block, oh, ow, p_mask, offs_c, c_mask = _cl_program_tile(
        xt_ptr, wk_ptr, conv_bias_ptr, bias_ptr, scale_ptr,
        C_out, H, W, H_out, W_out, KH, KW, num_chunks, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        num_th, num_tw, num_c_blocks, has_conv_bias,
        BLOCK_H, BLOCK_W, BLOCK_C, BLOCK_K, K_STEPS, TAPS, PRECISION, UNIT)
    _store_tile_stats(v, n, th, tw, p_mask, offs_c, c_mask, part_mean_ptr, part_m2_ptr,
                      C_out, H_out, W_out, num_th, num_tw, BLOCK_H, BLOCK_W)


@triton.jit
def conv_cl_norm_kernel(
    xt_ptr,         # [N, H, W, 8 * num_chunks], contiguous, 16-byte aligned (to_channels_last_kernel)
    wk_ptr,         # [C_out, num_chunks, TP, 8], contiguous, 16-byte aligned (pack_weight_kernel)
    conv_bias_ptr,  # [C_out]; read only if has_conv_bias
    bias_ptr,       # [C_out]
    scale_ptr,      # [C_out]
    gn_weight_ptr,  # [C_out]; read only if has_gn_weight
    gn_bias_ptr,    # [C_out]; read only if has_gn_bias
    stats_ptr,      # [N, G, 2] fp32 (mean, rstd)
    y_ptr,          # [N, C_out, H_out*W_out], contiguous, out
    C_out, H, W, H_out, W_out, KH, KW, num_chunks,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    num_th, num_tw, num_c_blocks, has_conv_bias,
    num_groups, channels_per_group, has_gn_weight, has_gn_bias,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    K_STEPS: tl.constexpr, TAPS: tl.constexpr, PRECISION: tl.constexpr, UNIT: tl.constexpr,
):
    v, n, th, tw, c_block, oh, ow, p_mask, offs_c, c_mask = _cl_program_tile(
        xt_ptr, wk_ptr, conv_bias_ptr, bias_ptr, scale_ptr,
        C_out, H, W, H_out, W_out, KH, KW, num_chunks, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        num_th, num_tw, num_c_blocks, has_conv_bias,
        BLOCK_H, BLOCK_W, BLOCK_C, BLOCK_K, K_STEPS, TAPS, PRECISION, UNIT)
    _store_normalized(v, n, c_block, oh, ow, p_mask, offs_c, c_mask, stats_ptr, gn_weight_ptr, gn_bias_ptr,
                      y_ptr, C_out, H_out, W_out, num_groups, channels_per_group, has_gn_weight, has_gn_bias,
                      BLOCK_C)


@triton.jit
def conv_resident_kernel(
    x_ptr,          # [N, C_in, H, W], strided
    w_ptr,          # [C_out, C_in*KH*KW], contiguous
    conv_bias_ptr,  # [C_out]; read only if has_conv_bias
    bias_ptr,       # [C_out]
    scale_ptr,      # [C_out]
    gn_weight_ptr,  # [C_out]; read only if has_gn_weight
    gn_bias_ptr,    # [C_out]; read only if has_gn_bias
    y_ptr,          # [N, C_out, H_out*W_out], contiguous, out
    C_out, H, W, W_out, HW_out, KH, KW, K_total,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    has_conv_bias, num_groups, channels_per_group, has_gn_weight, has_gn_bias, eps,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr, TAPS: tl.constexpr,
):
    """The whole op in one launch for small images: one program per (sample, group) holds all
    of the group's values (channels_per_group <= BLOCK_C, H_out*W_out <= BLOCK_M) in
    registers, so statistics and normalization need no second pass, no workspace and no other
    launch. Small problems are bound by launches and latency, not arithmetic: the conv is
    exact FP32 outer products, one k at a time (tl.dot's FMA path held whole K slices per
    thread and spilled), unrolled so that several k's loads are in flight at once."""
    pid = tl.program_id(0)
    n = pid // num_groups
    group = pid % num_groups
    offs_p = tl.arange(0, BLOCK_M)
    in_group = tl.arange(0, BLOCK_C)
    offs_c = group * channels_per_group + in_group
    p_mask = offs_p < HW_out
    c_mask = in_group < channels_per_group
    oh = offs_p // W_out
    ow = offs_p % W_out
    if TAPS > 0:
        # As in the tile function: clamped positions, so no load needs a bounds test.
        oh = tl.where(p_mask, oh, 0)
        ow = tl.where(p_mask, ow, 0)
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    pos = x_ptr + n.to(tl.int64) * stride_xn + ih0 * stride_xh + iw0 * stride_xw
    w_rows = w_ptr + offs_c * K_total
    acc = tl.zeros((BLOCK_C, BLOCK_M), dtype=tl.float32)
    if TAPS > 0:
        # The launcher's unpadded TAPS x TAPS promise (see the tile function): a runtime loop
        # over input channels around constant taps, each an immediate offset from its row.
        for ci in tl.range(0, K_total // (TAPS * TAPS), loop_unroll_factor=max(UNROLL // 4, 1)):
            x_ci = pos + ci * stride_xc
            w_ci = w_rows + ci * (TAPS * TAPS)
            for kh in tl.static_range(TAPS):
                row = x_ci + kh * dil_h * stride_xh
                for kw in tl.static_range(TAPS):
                    xv = tl.load(row + kw)
                    wv = tl.load(w_ci + (kh * TAPS + kw), mask=c_mask, other=0.0)
                    acc += wv.to(tl.float32)[:, None] * xv.to(tl.float32)[None, :]
    else:
        FAR: tl.constexpr = -(1 << 29)  # as in _conv_bias_scale_sigmoid_tile: fails the row test
        ih0 = tl.where(p_mask, ih0, FAR)
        inv_khw = 1.0 / (KH * KW).to(tl.float32)
        inv_kw = 1.0 / KW.to(tl.float32)
        for k in tl.range(0, K_total, loop_unroll_factor=UNROLL):
            # Same exact reciprocal decode as the tile function (K_total < 2^20).
            ci = ((k * 1.0 + 0.5) * inv_khw).to(tl.int32)  # k * 1.0: a plain int in the interpreter
            khw = k - ci * (KH * KW)
            kh = ((khw.to(tl.float32) + 0.5) * inv_kw).to(tl.int32)
            dh = kh * dil_h
            dw = (khw - kh * KW) * dil_w
            x_mask = ((ih0 + dh).to(tl.uint32, bitcast=True) < H.to(tl.uint32)) & \
                     ((iw0 + dw).to(tl.uint32, bitcast=True) < W.to(tl.uint32))
            xv = tl.load(pos + (ci * stride_xc + dh * stride_xh + dw * stride_xw), mask=x_mask, other=0.0)
            wv = tl.load(w_rows + k, mask=c_mask, other=0.0)
            acc += wv.to(tl.float32)[:, None] * xv.to(tl.float32)[None, :]
    mul, add = _channel_params(conv_bias_ptr, bias_ptr, scale_ptr, offs_c, c_mask, has_conv_bias)
    v = _sigmoid_of_log2(acc * mul[:, None] + add[:, None])
    # Exact two-pass statistics over registers: mean, then squared deviations from it.
    valid = c_mask[:, None] & p_mask[None, :]
    count = (channels_per_group * HW_out).to(tl.float32)
    mean = tl.sum(tl.sum(tl.where(valid, v, 0.0), axis=1), axis=0) / count
    dev = tl.where(valid, v - mean, 0.0)
    var = tl.sum(tl.sum(dev * dev, axis=1), axis=0) / count
    rstd = 1.0 / tl.sqrt_rn(var + eps)
    gamma = tl.load(gn_weight_ptr + offs_c, mask=c_mask & (has_gn_weight != 0), other=1.0).to(tl.float32)
    beta = tl.load(gn_bias_ptr + offs_c, mask=c_mask & (has_gn_bias != 0), other=0.0).to(tl.float32)
    y = dev * (rstd * gamma)[:, None] + beta[:, None]
    out = (n.to(tl.int64) * C_out + offs_c[:, None]) * HW_out + offs_p[None, :]
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=valid)
