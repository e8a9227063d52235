"""Conv2d -> +bias -> *scale -> sigmoid -> GroupNorm as three Triton kernels.

The single source of truth for fusedconv's GPU code: the AOT build compiles these functions
into cubins/PTX, the interpreter tests launch them on CPU tensors, and nothing else holds
kernel code.

Two algorithms over the same pieces (shared/design/performance-model.md, options 1 and 2):
  1. conv_stats_kernel: conv + epilogue per (sample, tile of output positions, channel
     block); writes each channel's tile mean and M2 (sum of squared deviations), and with
     STORE_V also the fp32 values themselves.
  2. group_stats_kernel: per (sample, group), merges those partials in a fixed order
     (Chan's parallel variance: exact, deterministic, never negative) into mean and rstd.
  3. either conv_norm_kernel: conv + epilogue again, normalizes, writes y once ("recompute":
     x read twice, y written once, the conv paid twice);
     or group_norm_apply_kernel: normalizes the stored values ("materialize": the conv paid
     once, y's bytes three times). Which is cheaper depends on how fast the conv runs.

Index conventions shared by the conv kernels:
  x       [N, C_in, H, W]           any strides; the batch stride is 64-bit, the others 32-bit
  weight  [C_out, C_in * KH * KW]   contiguous
  y       [N, C_out, H_out * W_out] contiguous
  partial [N, C_out, P_TILES]       fp32 tile mean and M2
  stats   [N, G, 2]                 fp32 (mean, rstd)
  one program per (n, position tile, channel block), channel block fastest so the programs
  that share an x tile run together and find it in L2.
"""
import triton
import triton.language as tl


@triton.jit
def _sigmoid(z):
    # exp(-z) overflows to inf for very negative z and 1 / (1 + inf) = 0 is the right limit,
    # so no clamping is needed; Triton has no tl.sigmoid.
    return 1.0 / (1.0 + tl.exp(-z))


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
def _tile_coords(num_p_tiles, num_c_blocks):
    pid = tl.program_id(0)
    c_block = pid % num_c_blocks
    rest = pid // num_c_blocks
    return rest // num_p_tiles, rest % num_p_tiles, c_block


@triton.jit
def _conv_bias_scale_sigmoid_tile(
    x_ptr, w_ptr, conv_bias_ptr, bias_ptr, scale_ptr,
    n, offs_p, offs_c, p_mask, c_mask,
    H, W, W_out, KH, KW, K_total,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    has_conv_bias,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """sigmoid(((conv(x, w) + conv_bias) + bias) * scale) for BLOCK_C channels x BLOCK_M
    positions, in fp32, channels first. Entries outside c_mask/p_mask hold garbage: callers
    mask.

    Computed transposed, acc[C, M] = W[C, K] @ im2col(x)^T[K, M], so that positions are the
    last dimension of every tile: Triton orders threads along the last dimension when it
    cannot prove contiguity (runtime strides, positions decoded with div/mod), and along
    positions both the x gathers and the y stores are coalesced."""
    oh = offs_p // W_out
    ow = offs_p % W_out
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_sample = x_ptr + n.to(tl.int64) * stride_xn
    pos_off = ih0 * stride_xh + iw0 * stride_xw
    # The whole load mask is one unsigned compare per axis, 0 <= ih < H and 0 <= iw < W:
    # positions past the tile's end and k past K_total get a row far outside x instead of
    # masks of their own (per-element mask arithmetic dominated the loop's SASS).
    FAR: tl.constexpr = -(1 << 29)
    ih0 = tl.where(p_mask, ih0, FAR)
    # k -> (ci, kh, kw) by multiplying with a reciprocal instead of integer division (a
    # ~20-instruction sequence on the GPU). The distance of (k + 0.5) / d to an integer is at
    # least 0.5 / d, and a reciprocal within 2 ulp (plain "/", no slow-path call like div_rn's)
    # keeps the product's error below that while k < 2^21; the launcher keeps K_total < 2^20.
    inv_khw = 1.0 / (KH * KW).to(tl.float32)
    inv_kw = 1.0 / KW.to(tl.float32)
    acc = tl.zeros((BLOCK_C, BLOCK_M), dtype=tl.float32)
    # Implicit GEMM: K runs over (ci, kh, kw).
    for k0 in range(0, K_total, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        ci = ((offs_k.to(tl.float32) + 0.5) * inv_khw).to(tl.int32)
        khw = offs_k - ci * (KH * KW)
        kh = ((khw.to(tl.float32) + 0.5) * inv_kw).to(tl.int32)
        dh = kh * dil_h
        dw = (khw - kh * KW) * dil_w
        ih = tl.where(offs_k < K_total, dh, FAR)[:, None] + ih0[None, :]
        iw = dw[:, None] + iw0[None, :]
        x_mask = (ih.to(tl.uint32, bitcast=True) < H.to(tl.uint32)) & \
                 (iw.to(tl.uint32, bitcast=True) < W.to(tl.uint32))
        tap_off = ci * stride_xc + dh * stride_xh + dw * stride_xw
        x_tile = tl.load(x_sample + tap_off[:, None] + pos_off[None, :], mask=x_mask, other=0.0)
        w_tile = tl.load(w_ptr + offs_c[:, None] * K_total + offs_k[None, :],
                         mask=c_mask[:, None] & (offs_k < K_total)[None, :], other=0.0)
        if PRECISION == "tf32x3_split":
            # fp32-accurate on TF32 tensor cores: w*x ~ w_hi*x_lo + w_lo*x_hi + w_hi*x_hi
            # (w_lo*x_lo, ~2^-20 relative, dropped), small terms first. Cheaper than Triton's
            # "tf32x3", whose round-to-nearest split cost ~150 instructions per K step.
            w_hi, w_lo = _tf32_split(w_tile)
            x_hi, x_lo = _tf32_split(x_tile)
            acc = tl.dot(w_hi, x_lo, acc, input_precision="tf32")
            acc = tl.dot(w_lo, x_hi, acc, input_precision="tf32")
            acc = tl.dot(w_hi, x_hi, acc, input_precision="tf32")
        else:
            acc = tl.dot(w_tile, x_tile, acc, input_precision=PRECISION)

    return _bias_scale_sigmoid(acc, conv_bias_ptr, bias_ptr, scale_ptr, offs_c, c_mask, has_conv_bias)


@triton.jit
def _bias_scale_sigmoid(acc, conv_bias_ptr, bias_ptr, scale_ptr, offs_c, c_mask, has_conv_bias):
    """The conv's epilogue on acc[C, M]."""
    # A missing conv bias is a masked-off load (reads nothing, yields 0): no extra variant.
    conv_bias = tl.load(conv_bias_ptr + offs_c, mask=c_mask & (has_conv_bias != 0), other=0.0)
    bias = tl.load(bias_ptr + offs_c, mask=c_mask, other=0.0)
    scale = tl.load(scale_ptr + offs_c, mask=c_mask, other=0.0)
    # The reference's order of rounding: ((conv + conv_bias) + bias) * scale.
    z = (acc + conv_bias.to(tl.float32)[:, None] + bias.to(tl.float32)[:, None]) * scale.to(tl.float32)[:, None]
    return _sigmoid(z)


@triton.jit
def conv_stats_kernel(
    x_ptr,          # [N, C_in, H, W], strided
    w_ptr,          # [C_out, C_in*KH*KW], contiguous
    conv_bias_ptr,  # [C_out]; read only if has_conv_bias
    bias_ptr,       # [C_out]
    scale_ptr,      # [C_out]
    part_mean_ptr,  # [N, C_out, num_p_tiles] fp32, out
    part_m2_ptr,    # [N, C_out, num_p_tiles] fp32, out
    v_ptr,          # [N, C_out, H_out*W_out] fp32, out if STORE_V: the values to normalize
    C_out, H, W, W_out, HW_out, KH, KW, K_total,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    num_p_tiles, num_c_blocks, has_conv_bias,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, STORE_V: tl.constexpr,
):
    n, p_tile, c_block = _tile_coords(num_p_tiles, num_c_blocks)
    offs_p = p_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    p_mask = offs_p < HW_out
    c_mask = offs_c < C_out
    v = _conv_bias_scale_sigmoid_tile(
        x_ptr, w_ptr, conv_bias_ptr, bias_ptr, scale_ptr,
        n, offs_p, offs_c, p_mask, c_mask,
        H, W, W_out, KH, KW, K_total,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        has_conv_bias, BLOCK_M, BLOCK_C, BLOCK_K, PRECISION)
    # Two passes over registers: the tile's own mean first, then squared deviations from it,
    # so M2 never suffers the cancellation of sum(v^2) - sum(v)^2 / n.
    count = tl.minimum(HW_out - p_tile * BLOCK_M, BLOCK_M).to(tl.float32)
    tile_mean = tl.sum(tl.where(p_mask[None, :], v, 0.0), axis=1) / count
    dev = tl.where(p_mask[None, :], v - tile_mean[:, None], 0.0)
    tile_m2 = tl.sum(dev * dev, axis=1)
    out = (n.to(tl.int64) * C_out + offs_c) * num_p_tiles + p_tile
    tl.store(part_mean_ptr + out, tile_mean, mask=c_mask)
    tl.store(part_m2_ptr + out, tile_m2, mask=c_mask)
    if STORE_V:
        v_out = (n.to(tl.int64) * C_out + offs_c[:, None]) * HW_out + offs_p[None, :]
        tl.store(v_ptr + v_out, v, mask=c_mask[:, None] & p_mask[None, :])


@triton.jit
def group_stats_kernel(
    part_mean_ptr,  # [N, C_out, num_p_tiles] fp32
    part_m2_ptr,    # [N, C_out, num_p_tiles] fp32
    stats_ptr,      # [N, G, 2] fp32, out: (mean, rstd)
    channels_per_group, HW_out, num_p_tiles, tile_m, eps,
    BLOCK: tl.constexpr,
):
    # One program per (n, group). A group's channels are adjacent, so its partials are one
    # contiguous run of channels_per_group * num_p_tiles entries.
    pid = tl.program_id(0)
    run = channels_per_group * num_p_tiles
    base = pid.to(tl.int64) * run
    total = (channels_per_group * HW_out).to(tl.float32)

    weighted = tl.zeros((BLOCK,), dtype=tl.float32)
    for i0 in range(0, run, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        mask = i < run
        count = tl.minimum(HW_out - (i % num_p_tiles) * tile_m, tile_m).to(tl.float32)
        weighted += tl.where(mask, count * tl.load(part_mean_ptr + base + i, mask=mask, other=0.0), 0.0)
    mean = tl.sum(weighted, axis=0) / total

    # Chan et al.: M2 = sum(M2_i) + sum(n_i * (mean_i - mean)^2); every term is >= 0.
    m2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for i0 in range(0, run, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        mask = i < run
        count = tl.minimum(HW_out - (i % num_p_tiles) * tile_m, tile_m).to(tl.float32)
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
    C_out, H, W, W_out, HW_out, KH, KW, K_total,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    num_p_tiles, num_c_blocks, has_conv_bias,
    num_groups, channels_per_group, has_gn_weight, has_gn_bias,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    n, p_tile, c_block = _tile_coords(num_p_tiles, num_c_blocks)
    offs_p = p_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    p_mask = offs_p < HW_out
    c_mask = offs_c < C_out
    v = _conv_bias_scale_sigmoid_tile(
        x_ptr, w_ptr, conv_bias_ptr, bias_ptr, scale_ptr,
        n, offs_p, offs_c, p_mask, c_mask,
        H, W, W_out, KH, KW, K_total,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        has_conv_bias, BLOCK_M, BLOCK_C, BLOCK_K, PRECISION)
    stat = (n.to(tl.int64) * num_groups + offs_c // channels_per_group) * 2
    mean = tl.load(stats_ptr + stat, mask=c_mask, other=0.0)
    rstd = tl.load(stats_ptr + stat + 1, mask=c_mask, other=0.0)
    gamma = tl.load(gn_weight_ptr + offs_c, mask=c_mask & (has_gn_weight != 0), other=1.0).to(tl.float32)
    beta = tl.load(gn_bias_ptr + offs_c, mask=c_mask & (has_gn_bias != 0), other=0.0).to(tl.float32)
    y = (v - mean[:, None]) * (rstd * gamma)[:, None] + beta[:, None]
    out = (n.to(tl.int64) * C_out + offs_c[:, None]) * HW_out + offs_p[None, :]
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=c_mask[:, None] & p_mask[None, :])


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
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr,
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
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    pos = x_ptr + n.to(tl.int64) * stride_xn + ih0 * stride_xh + iw0 * stride_xw
    FAR: tl.constexpr = -(1 << 29)  # as in _conv_bias_scale_sigmoid_tile: fails the row test
    ih0 = tl.where(p_mask, ih0, FAR)
    inv_khw = 1.0 / (KH * KW).to(tl.float32)
    inv_kw = 1.0 / KW.to(tl.float32)
    w_rows = w_ptr + offs_c * K_total
    acc = tl.zeros((BLOCK_C, BLOCK_M), dtype=tl.float32)
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
    v = _bias_scale_sigmoid(acc, conv_bias_ptr, bias_ptr, scale_ptr, offs_c, c_mask, has_conv_bias)
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
