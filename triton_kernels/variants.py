"""What the AOT build compiles from conv_sigmoid_groupnorm.py: kernels x dtypes x precision
modes x block configs x archs, and each kernel argument's type.

Kept beside the kernels so the build, the interpreter tests and the export read one table.
Config names are part of the runtime's contract: rules.py picks them by name, and a test checks
that every name it returns is in the table it picks from.
"""
from dataclasses import dataclass

from . import conv_fma_gluon as g
from . import conv_sigmoid_groupnorm as k
from . import rules


@dataclass(frozen=True)
class Config:
    name: str
    meta: dict  # the kernel's constexpr block sizes
    num_warps: int
    num_stages: int
    maxnreg: int = 0  # ptxas's register budget per thread (0: ptxas picks, as few as it can)

    @property
    def compile_options(self) -> dict:
        """triton.compile's options for this config (the AOT build's and the benchmarks')."""
        return dict(num_warps=self.num_warps, num_stages=self.num_stages,
                    **({"maxnreg": self.maxnreg} if self.maxnreg else {}))


# Conv kernels: a BLOCK_H x BLOCK_W tile of positions (the dot's M, a warpgroup MMA on sm_90)
# by BLOCK_C channels. Chosen from sweeps on the H200 (docs/performance-log.md, v4, v5, v7): small
# 4-warp programs without software pipelining, several per SM, hide the gathers' latency best;
# the channel tile follows C_out, because every channel block redoes the whole gather.
# K_STEPS > 0 unrolls that many K steps at compile time (any K beyond them runs in a runtime
# loop, so every config is correct for every shape): 5 steps of 16 cover the benchmark's
# K = 72, and unrolled they ran 1.5-2x faster than the same steps in a runtime loop.
#   row_c32_k5     16 < C_out < 64 on wide images: the benchmark's config (a 1 x 128 row tile)
#   h2w32_c64      C_out >= 64 (UNet shapes: half the gathers of two 32-channel blocks), and
#                  16 < C_out < 64 on narrower images
#   h4w32_c16      C_out <= 16, and the small fallback
CONV_CONFIGS = (
    Config("row_c32_k5", dict(BLOCK_H=1, BLOCK_W=128, BLOCK_C=32, BLOCK_K=16, K_STEPS=5), num_warps=4, num_stages=1),
    Config("h2w32_c64", dict(BLOCK_H=2, BLOCK_W=32, BLOCK_C=64, BLOCK_K=16, K_STEPS=0), num_warps=4, num_stages=1),
    Config("h4w32_c16", dict(BLOCK_H=4, BLOCK_W=32, BLOCK_C=16, BLOCK_K=16, K_STEPS=0), num_warps=4, num_stages=1),
)

# The channels-last conv kernels in fp16/bf16: the same roles and names, with a row tile twice
# as wide. 1 x 256 at 4 warps ran their two passes 13% faster than 1 x 128 (0.81 against 0.93
# ms, fp16, H200; 2 x 128 0.82, 1 x 256 at 8 warps 1.09; docs/performance-log.md, v10) at 119-124
# registers; the runtime gives it images at least 192 wide (so a tile is at least 3/4 used).
# Their fp32 images keep CONV_CONFIGS: at 1 x 256 the sm_89 ones needed 255 registers and a
# 88-280 byte stack (arrays in local memory), and TF32 on sm_90 gained 1%.
CL_CONV_CONFIGS = (
    Config("row_c32_k5", dict(BLOCK_H=1, BLOCK_W=256, BLOCK_C=32, BLOCK_K=16, K_STEPS=5), num_warps=4, num_stages=1),
    *CONV_CONFIGS[1:],
)

# The Gluon FMA conv kernels (conv_fma_gluon.py), exact fp32 for the unpadded 3 x 3 kernel at
# unit stride: a thread holds CT channels x MT columns of one output row (CT * MT accumulators),
# TC threads along channels, so a program is one row of BLOCK_W = (32 / TC) * WARPS * MT
# columns by BLOCK_C = CT * TC channels. rules.fma_conv_config picks by W_out (the last column
# tile is shifted left, so it needs W_out >= BLOCK_W).
#   fma_w128   CT 4 x MT 8: ~80% of the inner loop FFMA. ptxas gets a budget of 96 registers
#              (5 programs an SM; left to itself it takes 72 for the statistics pass and 80 for
#              the normalize pass, 7 and 6 programs): the passes ran 1.158 / 1.357 ms with it
#              against 1.172 / 1.365 without, within run-to-run noise, and 112 or 128 ran 6-18%
#              slower (H200, sm_89 PTX; log v14). Session 11's full suites ran on these images
#   fma_w64    CT 4 x MT 4: the smaller fallback for images 64-127 columns wide
FMA_CONV_CONFIGS = (
    Config("fma_w128", dict(BLOCK_H=1, BLOCK_W=128, BLOCK_C=32, CT=4, MT=8, TC=8, WARPS=4), num_warps=4, num_stages=1,
           maxnreg=96),
    Config("fma_w64", dict(BLOCK_H=1, BLOCK_W=64, BLOCK_C=32, CT=4, MT=4, TC=8, WARPS=4), num_warps=4, num_stages=1),
)

# Statistics merge: one program per (sample, group) streams that group's partials.
GROUP_STATS_CONFIGS = (
    Config("b256", dict(BLOCK=256), num_warps=4, num_stages=1),
    Config("b64", dict(BLOCK=64), num_warps=1, num_stages=1),
)

# Element-wise normalization of stored values: memory-bound, 4 elements per thread in each.
APPLY_CONFIGS = (
    Config("b512", dict(BLOCK=512), num_warps=4, num_stages=1),
    Config("b256", dict(BLOCK=256), num_warps=2, num_stages=1),
)

# Single-launch kernel for small images: one program per (sample, group) holding the whole
# group, BLOCK_C x BLOCK_M values, in registers (8-16 accumulators per thread). Which one runs
# is decided by fit (channels per group <= BLOCK_C, H_out*W_out <= BLOCK_M), smallest first.
# On the small problem (4 x 900 per group) 8 warps beat 16 (12.8 vs 14.3 us a call, H200) and
# unrolling 8 k's beat 24; r4_m256 is the small fallback.
RESIDENT_CONFIGS = (
    Config("r4_m256", dict(BLOCK_M=256, BLOCK_C=4, UNROLL=8), num_warps=2, num_stages=1),
    Config("r8_m512", dict(BLOCK_M=512, BLOCK_C=8, UNROLL=8), num_warps=8, num_stages=1),
    Config("r4_m1024", dict(BLOCK_M=1024, BLOCK_C=4, UNROLL=8), num_warps=8, num_stages=1),
)

# Copy of x to channels-last: memory-bound, one program per BLOCK positions of a row, 8
# channels per position in each thread's 16-byte store. 2 positions a thread amortize the
# program's index arithmetic (30 SASS instructions per element against 52 with 1, which ran
# issue-bound) at 48 registers (4 positions a thread took 78 and ran latency-bound at 25%
# occupancy; docs/performance-log.md, v10); b64 is the fallback for narrow images.
TRANSPOSE_CONFIGS = (
    Config("b256", dict(BLOCK=256), num_warps=8, num_stages=1),
    Config("b64", dict(BLOCK=64), num_warps=2, num_stages=1),
)

# Weight packing for the channels-last conv: C_out * C_in / 8 tiny programs, BLOCK taps a step.
PACK_CONFIGS = (
    Config("b16", dict(BLOCK=16), num_warps=1, num_stages=1),
    Config("b8", dict(BLOCK=8), num_warps=1, num_stages=1),
)

_CL_ALIGNED = ("xt_ptr", "wk_ptr")
# The FMA conv's weight is the launcher's packed copy (16-byte aligned): a tap's channels load as one vector.
_FMA_PACKED_WEIGHT = ("w_ptr",)
# The FMA conv's flavours: (suffix, X_ALIGNED, arguments divisible by 16, passes). Any x with
# adjacent columns; and x 16-byte aligned with W and its strides multiples of 16
# (rules.fma_x_aligned, which the launcher checks), whose rows load as 16-byte vectors, for
# recompute's two passes at the 128-column tile (rules.FMA_ALIGNED_BLOCK_W; its fallback is the
# first flavour's fma_w64). Materialize runs the first flavour: its stats_store image needed a
# stack frame under fma_w128's 96 registers in the aligned flavour.
_FMA_FLAVOURS = (("", False, _FMA_PACKED_WEIGHT, ("stats", "stats_store", "norm"), FMA_CONV_CONFIGS),
                 ("_aligned", True, _FMA_PACKED_WEIGHT + ("x_ptr", "W", "stride_xn", "stride_xc", "stride_xh"),
                  ("stats", "norm"),
                  tuple(c for c in FMA_CONV_CONFIGS if c.meta["BLOCK_W"] == rules.FMA_ALIGNED_BLOCK_W)))
_FMA_PASSES = {"stats": (g.conv3x3_fma_stats_kernel, {"STORE_V": False}),
               "stats_store": (g.conv3x3_fma_stats_kernel, {"STORE_V": True}),
               "norm": (g.conv3x3_fma_norm_kernel, {})}
# The unit flavour's compile-time facts: every pointer 16-byte aligned and C_out a multiple of
# 16, which the launcher checks before it picks the flavour (vector loads and stores of the
# channel parameters, statistics and y, and folded channel offsets).
_CL_UNIT_DIVISIBLE = ("xt_ptr", "wk_ptr", "conv_bias_ptr", "bias_ptr", "scale_ptr", "part_mean_ptr", "part_m2_ptr",
                      "gn_weight_ptr", "gn_bias_ptr", "stats_ptr", "y_ptr", "C_out")
# The channels-last conv kernels' flavours: (name, TAPS, UNIT, arguments divisible by 16). Any
# kernel; the unpadded 3 x 3; and that one specialized the way Triton's JIT specializes the
# benchmark (one input chunk, one channel block, unit stride and dilation as constants, the
# facts above): 20-27% fewer instructions per tile, 9% faster (docs/performance-log.md, v10).
_CL_FLAVOURS = (("conv_cl", 0, False, _CL_ALIGNED), ("conv3x3_cl", 3, False, _CL_ALIGNED),
                ("conv3x3_cl_unit", 3, True, _CL_UNIT_DIVISIBLE))

DTYPES = ("fp32", "fp16", "bf16")

# tl.dot input precision per (arch, dtype, mode). "accurate" must pass allclose(1e-4) in fp32:
# on sm_90 the tensor cores in 3xTF32 beat the FP32 units, with the kernel's own truncating
# split ("tf32x3_split": 208 SASS instructions per K step against 327 for Triton's "tf32x3");
# on sm_89 TF32 runs no faster than FFMA, so exact FP32 ("ieee", lowered to FMA) is the
# accurate path. "tf32" is the opt-in fast mode. Half-precision operands always use the
# tensor cores; their products are exact in the fp32 accumulator, so they have one mode.
def precisions(arch: int, dtype: str) -> dict:
    if dtype != "fp32":
        return {"native": "tf32"}
    return {"accurate": "tf32x3_split" if arch >= 90 else "ieee", "tf32": "tf32"}


@dataclass(frozen=True)
class KernelSpec:
    fn: object
    configs: tuple
    fixed: dict        # constexprs this kernel name pins
    per_dtype: bool    # compiled once per input dtype
    per_mode: bool     # compiled once per precision mode (the conv kernels)
    divisible: tuple = ()  # arguments the launcher guarantees to be multiples of 16 (pointers: bytes)
    fp32_configs: tuple = ()  # the fp32 images' configs where they differ (same names, smaller tiles)
    dtypes: tuple = DTYPES    # the dtypes it is compiled for, when per_dtype
    modes: tuple = ()         # the precision modes it is compiled for, when per_mode (empty: all)

    @property
    def gluon(self) -> bool:
        """A Gluon kernel: compiled from Gluon's AST source, no tl.dot precision constexpr, and not
        run by the interpreter (its plain-Triton twin is)."""
        return type(self.fn).__name__ == "GluonJITFunction"

    def configs_for(self, dtype: str) -> tuple:
        return self.fp32_configs if dtype == "fp32" and self.fp32_configs else self.configs


# The image names the C++ runtime asks for (codegen.py makes each a constant of the KernelName
# enum, tied to its kernel's typed launcher). The NCHW conv and resident kernels come in two
# flavours: any kernel size and padding (TAPS = 0), and the unpadded 3 x 3 kernel (TAPS = 3: no
# bounds tests, k decoded by constants); the channels-last conv kernels in three (_CL_FLAVOURS).
# rules.conv_taps, channels_last_taps and channels_last_unit pick one.
KERNELS = {
    "conv_stats": KernelSpec(k.conv_stats_kernel, CONV_CONFIGS, {"STORE_V": False, "TAPS": 0}, True, True),
    "conv_stats_store": KernelSpec(k.conv_stats_kernel, CONV_CONFIGS, {"STORE_V": True, "TAPS": 0}, True, True),
    "conv_norm": KernelSpec(k.conv_norm_kernel, CONV_CONFIGS, {"TAPS": 0}, True, True),
    "conv3x3_stats": KernelSpec(k.conv_stats_kernel, CONV_CONFIGS, {"STORE_V": False, "TAPS": 3}, True, True),
    "conv3x3_stats_store": KernelSpec(k.conv_stats_kernel, CONV_CONFIGS, {"STORE_V": True, "TAPS": 3}, True, True),
    "conv3x3_norm": KernelSpec(k.conv_norm_kernel, CONV_CONFIGS, {"TAPS": 3}, True, True),
    # The channels-last algorithm: its conv kernels read workspaces the launcher allocates
    # (so 16-byte aligned, which their vector loads need the compiler to know).
    "to_channels_last": KernelSpec(k.to_channels_last_kernel, TRANSPOSE_CONFIGS, {}, True, False),
    "pack_weight": KernelSpec(k.pack_weight_kernel, PACK_CONFIGS, {}, True, False),
    **{f"{flavour}_{part}": KernelSpec(fn, CL_CONV_CONFIGS, {"TAPS": taps, "UNIT": unit}, True, True, divisible,
                                       CONV_CONFIGS)
       for flavour, taps, unit, divisible in _CL_FLAVOURS
       for part, fn in (("stats", k.conv_cl_stats_kernel), ("norm", k.conv_cl_norm_kernel))},
    # The Gluon FMA flavour of conv3x3_stats, conv3x3_stats_store and conv3x3_norm (same
    # arguments, the weight packed; those are its twins), in its two _FMA_FLAVOURS: exact fp32 only.
    **{f"conv3x3_fma_{part}{suffix}": KernelSpec(_FMA_PASSES[part][0], configs,
                                                 dict(_FMA_PASSES[part][1], X_ALIGNED=aligned), True, True,
                                                 divisible, dtypes=("fp32",), modes=("accurate",))
       for suffix, aligned, divisible, parts, configs in _FMA_FLAVOURS for part in parts},
    "group_stats": KernelSpec(k.group_stats_kernel, GROUP_STATS_CONFIGS, {}, False, False),
    "group_norm_apply": KernelSpec(k.group_norm_apply_kernel, APPLY_CONFIGS, {}, True, False),
    # Exact FP32 on every arch and dtype: small problems are latency-bound, not FLOP-bound.
    "conv_resident": KernelSpec(k.conv_resident_kernel, RESIDENT_CONFIGS, {"TAPS": 0}, True, False),
    "conv3x3_resident": KernelSpec(k.conv_resident_kernel, RESIDENT_CONFIGS, {"TAPS": 3}, True, False),
}

# Buffers the kernels own are fp32 whatever the input dtype.
_FP32_POINTERS = {"part_mean_ptr", "part_m2_ptr", "stats_ptr", "v_ptr"}
_INT64_ARGS = {"stride_xn"}
_FP32_ARGS = {"eps"}


def signature(fn, dtype: str, constexprs: dict) -> dict:
    """Triton AOT signature of `fn`: tensors of the op's dtype, our fp32 buffers, 32-bit
    sizes except the 64-bit batch stride (outputs over 2^31 elements need it)."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32" if name in _FP32_POINTERS else f"*{dtype}"
        elif name in _INT64_ARGS:
            sig[name] = "i64"
        elif name in _FP32_ARGS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


@dataclass(frozen=True)
class Variant:
    kernel: str      # key of KERNELS
    dtype: str       # "fp32" | "fp16" | "bf16"; dtype-free kernels say "fp32"
    mode: str        # "accurate" | "tf32" | "native"; mode-free kernels say "any"
    precision: str   # tl.dot input_precision, "" for mode-free kernels
    config: Config

    @property
    def fn(self):
        return KERNELS[self.kernel].fn

    @property
    def constexprs(self) -> dict:
        c = dict(self.config.meta, **KERNELS[self.kernel].fixed)
        if self.precision and not KERNELS[self.kernel].gluon:
            c["PRECISION"] = self.precision
        return c

    @property
    def attrs(self) -> dict:
        """Triton's compile-time facts: the arguments the launcher guarantees to be multiples of 16."""
        divisible = KERNELS[self.kernel].divisible
        return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(self.fn.arg_names) if name in divisible}

    @property
    def name(self) -> str:
        parts = [self.kernel, self.dtype, self.mode, self.config.name]
        return "_".join(p for p in parts if p != "any")


def variants(arch: int):
    """Every kernel variant the build ships for one arch."""
    out = []
    for kernel, spec in KERNELS.items():
        for dtype in spec.dtypes if spec.per_dtype else ("fp32",):
            for cfg in spec.configs_for(dtype):
                modes = precisions(arch, dtype).items() if spec.per_mode else [("any", "")]
                for mode, precision in modes:
                    if spec.modes and mode not in spec.modes:
                        continue
                    out.append(Variant(kernel, dtype, mode, precision, cfg))
    return out
