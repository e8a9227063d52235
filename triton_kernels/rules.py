"""The runtime's choices, written once: which algorithm, which kernel flavour and which block
config a call runs.

The C++ runtime, the Triton-JIT peer, the exported file and the tests all follow these
functions. The AOT build translates them into C++ (build_scripts/codegen.py writes them to
`fusedconv_rules.h`); the exported file carries their source verbatim. So they are written in
the small subset of Python the translator knows: module-level integer constants, functions
whose arguments are annotated `int`, `bool` or `str` and which return one of those, bodies of
`if ...: return ...` and a final `return`, and expressions over comparisons, `and`/`or`/`not`,
`+ - * // %`, conditional expressions and calls of each other. No imports.

The evidence behind each number: docs/performance.md (the current state) and
docs/performance-log.md (each measurement).
"""

# The algorithms, in the order the autotuner and `python -m fusedconv info` list them.
#   materialize    conv once, store fp32 values and tile statistics, normalize them in a
#                  memory-bound pass
#   recompute      conv twice (statistics, then normalize): y written once
#   channels_last  recompute over a channels-last copy of x whose conv tile gathers with
#                  16-byte vector loads
#   resident       one launch, one program per (sample, group) holding the whole group
ALGORITHMS = ("materialize", "recompute", "channels_last", "resident")

# Precision modes: fp32 is "accurate" (allclose 1e-4) unless the user opted into TF32 with
# torch.set_float32_matmul_precision("high" or "medium"); 16-bit inputs have one mode.
MODES = ("accurate", "tf32", "native")

# channels_last copies x in chunks of 8 channels. Over one chunk its second conv is cheaper
# than materialize's extra bytes (H200, benchmark shape: fp16 1.06 against 1.37 ms, TF32 1.52
# against 1.58); with more input channels materialize won 14 of 16 shapes with C_in 16-64 and
# every UNet shape (1.2-1.9x, H100).
CHANNELS_LAST_MAX_C_IN = 8

# resident beats the tiled algorithms' three launches while its programs fit about one wave and
# its arithmetic is small (H200: the 1x8x32x32 problem takes 1 launch instead of 3; at batch
# 128 the tiled kernels win 2x).
RESIDENT_MAX_PROGRAMS = 256
RESIDENT_MAX_MACS = 67108864  # 2^26 multiply-adds

# Conv block configs: the channel tile follows C_out, because every channel block redoes the
# whole x gather; the row tile (1 x 128, 1 x 256 in the 16-bit channels-last kernels) needs
# images wide enough to fill 3/4 of it.
CONV_NARROW_MAX_C_OUT = 16
CONV_WIDE_MIN_C_OUT = 64
ROW_TILE_MIN_W_OUT = 96
ROW_TILE_MIN_W_OUT_CHANNELS_LAST = 192

# The Gluon FMA conv kernels (triton_kernels/conv_fma_gluon.py) run exact fp32 where the
# tensor cores have no accurate fp32 path (sm_89: TF32 only), for the unpadded 3 x 3 kernel at
# unit stride and row dilation. Their last column tile is shifted left to end at W_out, so an
# image must be at least one tile (128 or 64 columns) wide.
FMA_CONV_ARCH = 89
FMA_WIDE_MIN_W_OUT = 128
FMA_MIN_W_OUT = 64
# Their aligned flavour (fma_x_aligned) loads each thread's columns of x as 16-byte vectors
# (MT + 2 scalar loads become MT / 4 + 1 vectors): it needs x 16-byte aligned and W and x's
# strides multiples of FMA_X_ALIGN elements, the divisibility facts its images are built with.
# It is built for the 128-column tile only: through the sm_89 PTX on the H200 its passes ran
# 4% and 3% faster there (1.118 / 1.192 ms against 1.164 / 1.229) and 6% slower at 64 columns
# (docs/performance-log.md, session 13).
FMA_X_ALIGN = 16
FMA_ALIGNED_BLOCK_W = 128

# Materialize with the FMA conv (sm_89 images) runs the batch in chunks whose fp32 values fit
# half of the RTX 4090's 72 MB L2, so the normalize pass reads them back from L2 and DRAM sees x
# read once and y written once (docs/performance.md, the 4090 model: at 1008 GB/s the values'
# round trip through DRAM would cost more than the conv).
MATERIALIZE_CHUNK_BYTES = 37748736  # 36 MiB

# The memory-bound kernels' configs by the length of the run they stream.
GROUP_STATS_WIDE_RUN = 512     # a group's partials: channels per group x tiles
APPLY_WIDE_HW = 512            # positions per output channel
COPY_WIDE_W = 128              # input columns per row
PACK_WIDE_TAPS = 9             # kernel taps, rounded up to even


def precision_mode(dtype: str, fp32_highest: bool) -> str:
    """dtype is "fp32", "fp16" or "bf16"; fp32_highest is torch's float32 matmul precision
    being "highest"."""
    if dtype != "fp32":
        return "native"
    if fp32_highest:
        return "accurate"
    return "tf32"


def default_algorithm(mode: str, c_in: int) -> str:
    """The tiled algorithm a call takes unless resident or the Gluon FMA conv does
    (fma_conv_algorithm): accurate fp32 (three TF32 products per MMA on sm_90, Triton's FMA dot
    on sm_89) materializes."""
    if mode == "accurate" or c_in > CHANNELS_LAST_MAX_C_IN:
        return "materialize"
    return "channels_last"


def fma_conv_algorithm() -> str:
    """The default algorithm where the Gluon FMA conv runs (fma_conv_config gives a config and
    no config is forced): recompute, the conv twice and y written once. On the RTX 4090 the
    values' round trip costs more than the second conv (the 4090 model in docs/performance.md:
    recompute 2.26 ms, materialize in L2-sized chunks ~2.5, unchunked 3.42), and through the
    sm_89 PTX on the H200 recompute measured fastest too (log, v13 and v14)."""
    return "recompute"


def fma_conv_config(arch: int, mode: str, taps: int, stride_h: int, stride_w: int, dil_h: int, w_out: int) -> str:
    """The Gluon FMA conv's config for materialize and recompute, or "" where their plain-Triton
    conv kernels run: arch is the image set's (89 on an RTX 4090 and under
    FUSEDCONV_FORCE_PTX=89), taps is conv_taps's flavour."""
    if arch != FMA_CONV_ARCH or mode != "accurate" or taps != 3:
        return ""
    if stride_h != 1 or stride_w != 1 or dil_h != 1:
        return ""
    if w_out >= FMA_WIDE_MIN_W_OUT:
        return "fma_w128"
    if w_out >= FMA_MIN_W_OUT:
        return "fma_w64"
    return ""


def fma_x_aligned(block_w: int, x_address: int, w: int, stride_n: int, stride_c: int, stride_h: int) -> bool:
    """Whether recompute's Gluon FMA passes at a config of block_w columns run their aligned
    flavour on this x (x_address in bytes, W and the strides in elements; its column stride is 1
    wherever the FMA conv runs)."""
    return (block_w == FMA_ALIGNED_BLOCK_W and x_address % FMA_X_ALIGN == 0 and w % FMA_X_ALIGN == 0
            and stride_n % FMA_X_ALIGN == 0 and stride_c % FMA_X_ALIGN == 0 and stride_h % FMA_X_ALIGN == 0)


def materialize_chunk(fma_conv: bool, n: int, c_out: int, hw_out: int) -> int:
    """Samples per materialize chunk (all n unless fma_conv: the call runs the Gluon FMA conv)."""
    if not fma_conv or n * c_out * hw_out * 4 <= MATERIALIZE_CHUNK_BYTES:
        return n
    if c_out * hw_out * 4 >= MATERIALIZE_CHUNK_BYTES:
        return 1
    return MATERIALIZE_CHUNK_BYTES // (c_out * hw_out * 4)


def resident_fits(block_c: int, block_m: int, channels_per_group: int, hw_out: int) -> bool:
    """Whether a resident config of BLOCK_C channels x BLOCK_M positions holds a whole group;
    the runtime takes the smallest config that does."""
    return block_c >= channels_per_group and block_m >= hw_out


def resident_by_default(programs: int, macs: int) -> bool:
    """Whether a problem whose groups fit a resident config takes it: programs is N x groups,
    macs N x C_out x H_out x W_out x C_in x KH x KW."""
    return programs <= RESIDENT_MAX_PROGRAMS and macs <= RESIDENT_MAX_MACS


def conv_config(c_out: int, w_out: int, channels_last: bool) -> str:
    """The conv kernels' block config (triton_kernels/variants.py, CONV_CONFIGS)."""
    if c_out <= CONV_NARROW_MAX_C_OUT:
        return "h4w32_c16"
    min_w = ROW_TILE_MIN_W_OUT_CHANNELS_LAST if channels_last else ROW_TILE_MIN_W_OUT
    if c_out >= CONV_WIDE_MIN_C_OUT or w_out < min_w:
        return "h2w32_c64"
    return "row_c32_k5"


def conv_taps(kh: int, kw: int, pad_h: int, pad_w: int, dil_w: int, x_stride_w: int) -> int:
    """The NCHW conv and resident kernels' flavour: 3 (an unpadded 3 x 3 kernel: no bounds
    tests, a row's taps at constant offsets, so x's columns must be adjacent and the column
    dilation 1) or 0 (any kernel)."""
    if kh == 3 and kw == 3 and pad_h == 0 and pad_w == 0 and dil_w == 1 and x_stride_w == 1:
        return 3
    return 0


def channels_last_taps(kh: int, kw: int, pad_h: int, pad_w: int) -> int:
    """The channels-last conv kernels' flavour: they read the launcher's own workspace, so
    only the padding matters."""
    if kh == 3 and kw == 3 and pad_h == 0 and pad_w == 0:
        return 3
    return 0


def channels_last_unit(taps: int, chunks: int, c_blocks: int, c_out: int, aligned: bool,
                       stride_h: int, stride_w: int, dil_h: int, dil_w: int) -> bool:
    """The channels-last unit flavour, compiled with the benchmark-like facts: the 3 x 3
    flavour, one chunk of input channels, one channel block, C_out a multiple of 16, every
    pointer 16-byte aligned, unit stride and dilation."""
    return (taps == 3 and chunks == 1 and c_blocks == 1 and c_out % 16 == 0 and aligned
            and stride_h == 1 and stride_w == 1 and dil_h == 1 and dil_w == 1)


def wide_or_narrow(size: int, threshold: int, wide: str, narrow: str) -> str:
    """A memory-bound kernel's config: the wide one from `threshold` on."""
    return wide if size >= threshold else narrow


def group_stats_config(group_run: int) -> str:
    return wide_or_narrow(group_run, GROUP_STATS_WIDE_RUN, "b256", "b64")


def apply_config(hw_out: int) -> str:
    return wide_or_narrow(hw_out, APPLY_WIDE_HW, "b512", "b256")


def copy_config(w: int) -> str:
    return wide_or_narrow(w, COPY_WIDE_W, "b256", "b64")


def pack_config(taps_even: int) -> str:
    return wide_or_narrow(taps_even, PACK_WIDE_TAPS, "b16", "b8")


def output_size(size: int, padding: int, dilation: int, kernel: int, stride: int) -> int:
    """One spatial dimension of the conv's output (valid arguments: the op checks them)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
