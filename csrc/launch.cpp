#include "launch.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <string>

#include "format.h"
#include "fusedconv_rules.h"

namespace fusedconv {
namespace {

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How a conv image tiles the output: one program per (sample, tile, channel block).
struct Tiling {
  int64_t tiles, c_blocks, grid;
  int32_t num_th, num_tw, num_c_blocks, block_h, block_w;
};

Tiling tiling_of(const Problem& p, const KernelImage& conv) {
  const int64_t block_w = conv.block_w, block_h = conv.block_m / block_w;
  const int64_t num_th = cdiv(p.h_out, block_h), num_tw = cdiv(p.w_out, block_w);
  const int64_t c_blocks = cdiv(p.c_out, conv.block_c);
  return {num_th * num_tw, c_blocks, p.n * num_th * num_tw * c_blocks,  // launch_params checks the grid
          i32(num_th, "tile rows"), i32(num_tw, "tile columns"), i32(c_blocks, "channel blocks"),
          i32(block_h, "BLOCK_H"), i32(block_w, "BLOCK_W")};
}

// One fp32 workspace: per-tile partial mean and M2, per-group (mean, rstd), and when
// materializing a non-fp32 output, the values to normalize (an fp32 output holds its own).
struct Statistics {
  at::Tensor workspace;
  CUdeviceptr part_mean, part_m2, stats, values;  // values: 0 unless materializing
};

Statistics statistics_workspace(const Problem& p, const Tiling& t, bool materialize) {
  const int64_t n_part = p.n * p.c_out * t.tiles;
  const int64_t n_values = materialize && !p.fp32 ? p.n * p.c_out * p.hw_out : 0;
  Statistics s;
  s.workspace = at::empty({2 * n_part + 2 * p.n * p.num_groups + n_values}, p.x_options.dtype(at::kFloat));
  s.part_mean = ptr(s.workspace);
  s.part_m2 = s.part_mean + n_part * sizeof(float);
  s.stats = s.part_m2 + n_part * sizeof(float);
  s.values = !materialize ? 0 : n_values ? s.stats + 2 * p.n * p.num_groups * sizeof(float) : p.y;
  return s;
}

// group_stats: each (sample, group)'s tile partials merged into (mean, rstd).
void merge_statistics(const Problem& p, const Tiling& t, const Statistics& s) {
  const int64_t group_run = p.channels_per_group * t.tiles;
  i32(group_run, "a group's tile count");
  const auto k = load(p.device, p.set, kernels::group_stats, "fp32", "any",
                      std::string(rules::group_stats_config(group_run)));
  launch(k, p.n * p.num_groups, p.stream,
         {.part_mean_ptr = s.part_mean, .part_m2_ptr = s.part_m2, .stats_ptr = s.stats,
          .channels_per_group = p.channels_per_group, .H_out = p.H_out, .W_out = p.W_out,
          .num_th = t.num_th, .num_tw = t.num_tw, .tile_h = t.block_h, .tile_w = t.block_w, .eps = p.eps});
}

// materialize (conv once, values stored, then normalized) and recompute (conv again to
// normalize, y written once) share the statistics pass over x in its own layout. The conv
// kernels come as plain Triton (any kernel, or the unpadded 3 x 3 flavour) or as the Gluon FMA
// flavour (an FMA config); all take the same arguments, so one sequence launches either.
template <typename StatsKernel, typename NormKernel>
void run_nchw_with(const Problem& p, KernelRef<StatsKernel> stats_ref, KernelRef<NormKernel> norm_ref,
                   const std::string& config, bool materialize) {
  const auto stats_k = load(p.device, p.set, stats_ref, p.dtype, p.mode, config);
  const Tiling t = tiling_of(p, *stats_k.image);
  const Statistics s = statistics_workspace(p, t, materialize);
  launch(stats_k, t.grid, p.stream,
         {.x_ptr = p.x, .w_ptr = p.weight, .conv_bias_ptr = p.conv_bias, .bias_ptr = p.bias, .scale_ptr = p.scale,
          .part_mean_ptr = s.part_mean, .part_m2_ptr = s.part_m2, .v_ptr = s.values,
          .C_out = p.C_out, .H = p.H, .W = p.W, .H_out = p.H_out, .W_out = p.W_out, .KH = p.KH, .KW = p.KW,
          .K_total = p.K_total, .stride_xn = p.stride_xn, .stride_xc = p.stride_xc, .stride_xh = p.stride_xh,
          .stride_xw = p.stride_xw, .stride_h = p.stride_h, .stride_w = p.stride_w, .pad_h = p.pad_h,
          .pad_w = p.pad_w, .dil_h = p.dil_h, .dil_w = p.dil_w, .num_th = t.num_th, .num_tw = t.num_tw,
          .num_c_blocks = t.num_c_blocks, .has_conv_bias = p.has_conv_bias});
  merge_statistics(p, t, s);
  if (materialize) {
    const auto apply_k = load(p.device, p.set, kernels::group_norm_apply, p.dtype, "any",
                              std::string(rules::apply_config(p.hw_out)));
    const int64_t blocks_per_row = cdiv(p.hw_out, apply_k.image->block_m);
    launch(apply_k, p.n * p.c_out * blocks_per_row, p.stream,
           {.v_ptr = s.values, .stats_ptr = s.stats, .gn_weight_ptr = p.gn_weight, .gn_bias_ptr = p.gn_bias,
            .y_ptr = p.y, .C_out = p.C_out, .HW_out = p.HW_out, .num_groups = p.num_groups,
            .channels_per_group = p.channels_per_group, .num_blocks = i32(blocks_per_row, "blocks per row"),
            .has_gn_weight = p.has_gn_weight, .has_gn_bias = p.has_gn_bias});
    return;
  }
  launch(load(p.device, p.set, norm_ref, p.dtype, p.mode, config), t.grid, p.stream,
         {.x_ptr = p.x, .w_ptr = p.weight, .conv_bias_ptr = p.conv_bias, .bias_ptr = p.bias, .scale_ptr = p.scale,
          .gn_weight_ptr = p.gn_weight, .gn_bias_ptr = p.gn_bias, .stats_ptr = s.stats, .y_ptr = p.y,
          .C_out = p.C_out, .H = p.H, .W = p.W, .H_out = p.H_out, .W_out = p.W_out, .KH = p.KH, .KW = p.KW,
          .K_total = p.K_total, .stride_xn = p.stride_xn, .stride_xc = p.stride_xc, .stride_xh = p.stride_xh,
          .stride_xw = p.stride_xw, .stride_h = p.stride_h, .stride_w = p.stride_w, .pad_h = p.pad_h,
          .pad_w = p.pad_w, .dil_h = p.dil_h, .dil_w = p.dil_w, .num_th = t.num_th, .num_tw = t.num_tw,
          .num_c_blocks = t.num_c_blocks, .has_conv_bias = p.has_conv_bias, .num_groups = p.num_groups,
          .channels_per_group = p.channels_per_group, .has_gn_weight = p.has_gn_weight,
          .has_gn_bias = p.has_gn_bias});
}

// The Gluon FMA conv's weight: [blocks, K_total, block_c] per block of block_c output channels,
// channels past C_out zero, so that a tap's channels are adjacent (conv_fma_gluon.py). ATen
// copies it on the call's stream; the workspace is freed stream-ordered after the launches.
at::Tensor packed_weight(const Problem& p, int64_t block_c) {
  const int64_t blocks = cdiv(p.c_out, block_c), k_total = p.c_in * p.kh * p.kw;
  const at::Tensor weight = at::from_blob(reinterpret_cast<void*>(p.weight), {p.c_out, k_total}, p.x_options);
  const at::Tensor padded =
      blocks * block_c == p.c_out ? weight : at::constant_pad_nd(weight, {0, 0, 0, blocks * block_c - p.c_out});
  at::Tensor packed = at::empty({blocks, k_total, block_c}, p.x_options);
  packed.permute({0, 2, 1}).copy_(padded.view({blocks, block_c, k_total}));
  return packed;
}

void run_nchw(const Problem& p, const std::string& config, bool materialize) {
  if (is_fma_config(config)) {  // policy.cpp checked that the flavour applies (fp32 only)
    const KernelImage& image = find_image(p.set, KernelName::conv3x3_fma_stats, p.dtype, p.mode, config);
    const at::Tensor weight = packed_weight(p, image.block_c);
    Problem chunk = p;
    chunk.weight = ptr(weight);
    if (!materialize) {
      if (rules::fma_x_aligned(image.block_w, static_cast<int64_t>(p.x), p.W, p.stride_xn, p.stride_xc,
                               p.stride_xh)) {
        return run_nchw_with(chunk, kernels::conv3x3_fma_stats_aligned, kernels::conv3x3_fma_norm_aligned, config,
                             false);
      }
      return run_nchw_with(chunk, kernels::conv3x3_fma_stats, kernels::conv3x3_fma_norm, config, false);
    }
    // Materialize in chunks of samples whose values stay in L2 between the two passes
    // (rules::materialize_chunk); each chunk is the whole sequence over its samples, y holding
    // their values in between.
    const int64_t samples = rules::materialize_chunk(true, p.n, p.c_out, p.hw_out);
    for (int64_t n0 = 0; n0 < p.n; n0 += samples) {
      chunk.n = std::min(samples, p.n - n0);
      chunk.x = p.x + static_cast<CUdeviceptr>(n0 * p.stride_xn * sizeof(float));
      chunk.y = p.y + static_cast<CUdeviceptr>(n0 * p.c_out * p.hw_out * sizeof(float));
      run_nchw_with(chunk, kernels::conv3x3_fma_stats_store, kernels::conv3x3_fma_norm, config, true);
    }
    return;
  }
  const bool taps3 = rules::conv_taps(p.kh, p.kw, p.pad_h, p.pad_w, p.dil_w, p.x_stride_w) == 3;
  const auto stats_ref = taps3 ? (materialize ? kernels::conv3x3_stats_store : kernels::conv3x3_stats)
                               : (materialize ? kernels::conv_stats_store : kernels::conv_stats);
  run_nchw_with(p, stats_ref, taps3 ? kernels::conv3x3_norm : kernels::conv_norm, config, materialize);
}

// channels_last: x copied to [N, H, W, 8 * chunks] (channels past C_in zero) and the weight packed
// to [C_out, chunks, taps rounded up to even, 8], then recompute over them.
void run_channels_last(const Problem& p, const std::string& config) {
  const bool taps3 = rules::channels_last_taps(p.kh, p.kw, p.pad_h, p.pad_w) == 3;
  // The tiling comes from the general image; the unit flavour, picked below, has the same
  // config and tiles. Only the images that run are loaded.
  const auto general_stats = taps3 ? kernels::conv3x3_cl_stats : kernels::conv_cl_stats;
  const KernelImage& general_image = find_image(p.set, general_stats.name, p.dtype, p.mode, config);
  const Tiling t = tiling_of(p, general_image);
  const Statistics s = statistics_workspace(p, t, false);

  // Both copies in one workspace of x's dtype; the weight's part starts 16-byte aligned (the
  // first holds a multiple of 8 elements).
  const int64_t chunks = cdiv(p.c_in, 8), taps = p.kh * p.kw, taps_even = taps + taps % 2;
  i32(p.h * p.w * 8 * chunks, "H * W * C_in rounded up to 8 (the channels-last copy of one sample)");
  const int64_t n_xt = p.n * p.h * p.w * 8 * chunks;
  const at::Tensor cl_space = at::empty({n_xt + p.c_out * chunks * taps_even * 8}, p.x_options);
  const CUdeviceptr xt = ptr(cl_space), wk = xt + n_xt * cl_space.element_size();
  const int32_t num_chunks = i32(chunks, "C_in / 8");

  const auto copy_k = load(p.device, p.set, kernels::to_channels_last, p.dtype, "any",
                           std::string(rules::copy_config(p.w)));
  const int64_t w_blocks = cdiv(p.w, copy_k.image->block_w);
  launch(copy_k, p.n * p.h * w_blocks, p.stream,
         {.x_ptr = p.x, .xt_ptr = xt, .C_in = p.C_in, .H = p.H, .W = p.W, .stride_xn = p.stride_xn,
          .stride_xc = p.stride_xc, .stride_xh = p.stride_xh, .stride_xw = p.stride_xw, .num_chunks = num_chunks,
          .num_w_blocks = i32(w_blocks, "column blocks")});
  const auto pack_k = load(p.device, p.set, kernels::pack_weight, p.dtype, "any",
                           std::string(rules::pack_config(taps_even)));
  launch(pack_k, p.c_out * chunks, p.stream,
         {.w_ptr = p.weight, .wk_ptr = wk, .C_in = p.C_in, .KT = i32(taps, "KH * KW"),
          .TP = i32(taps_even, "KH * KW"), .num_chunks = num_chunks});

  // The workspace pointers are aligned by construction once C_out % 16 == 0; the caller's are checked.
  const bool aligned = ((p.conv_bias | p.bias | p.scale | p.gn_weight | p.gn_bias | p.y | xt | wk | s.part_mean |
                         s.part_m2 | s.stats) % 16) == 0;
  const bool unit = rules::channels_last_unit(taps3 ? 3 : 0, chunks, t.c_blocks, p.c_out, aligned, p.stride_h,
                                              p.stride_w, p.dil_h, p.dil_w);
  const auto stats_k = unit ? load(p.device, p.set, kernels::conv3x3_cl_unit_stats, p.dtype, p.mode, config)
                            : load(p.device, general_stats, general_image);
  launch(stats_k, t.grid, p.stream,
         {.xt_ptr = xt, .wk_ptr = wk, .conv_bias_ptr = p.conv_bias, .bias_ptr = p.bias, .scale_ptr = p.scale,
          .part_mean_ptr = s.part_mean, .part_m2_ptr = s.part_m2, .C_out = p.C_out, .H = p.H, .W = p.W,
          .H_out = p.H_out, .W_out = p.W_out, .KH = p.KH, .KW = p.KW, .num_chunks = num_chunks,
          .stride_h = p.stride_h, .stride_w = p.stride_w, .pad_h = p.pad_h, .pad_w = p.pad_w, .dil_h = p.dil_h,
          .dil_w = p.dil_w, .num_th = t.num_th, .num_tw = t.num_tw, .num_c_blocks = t.num_c_blocks,
          .has_conv_bias = p.has_conv_bias});
  merge_statistics(p, t, s);
  const auto norm_ref = unit ? kernels::conv3x3_cl_unit_norm : taps3 ? kernels::conv3x3_cl_norm
                                                                     : kernels::conv_cl_norm;
  launch(load(p.device, p.set, norm_ref, p.dtype, p.mode, config), t.grid, p.stream,
         {.xt_ptr = xt, .wk_ptr = wk, .conv_bias_ptr = p.conv_bias, .bias_ptr = p.bias, .scale_ptr = p.scale,
          .gn_weight_ptr = p.gn_weight, .gn_bias_ptr = p.gn_bias, .stats_ptr = s.stats, .y_ptr = p.y,
          .C_out = p.C_out, .H = p.H, .W = p.W, .H_out = p.H_out, .W_out = p.W_out, .KH = p.KH, .KW = p.KW,
          .num_chunks = num_chunks, .stride_h = p.stride_h, .stride_w = p.stride_w, .pad_h = p.pad_h,
          .pad_w = p.pad_w, .dil_h = p.dil_h, .dil_w = p.dil_w, .num_th = t.num_th, .num_tw = t.num_tw,
          .num_c_blocks = t.num_c_blocks, .has_conv_bias = p.has_conv_bias, .num_groups = p.num_groups,
          .channels_per_group = p.channels_per_group, .has_gn_weight = p.has_gn_weight,
          .has_gn_bias = p.has_gn_bias});
}

// resident: one program per (sample, group) holding the whole group.
void run_resident(const Problem& p, const std::string& config) {
  const bool taps3 = rules::conv_taps(p.kh, p.kw, p.pad_h, p.pad_w, p.dil_w, p.x_stride_w) == 3;
  const auto k = load(p.device, p.set, taps3 ? kernels::conv3x3_resident : kernels::conv_resident, p.dtype, "any",
                      config);
  TORCH_CHECK_VALUE(rules::resident_fits(k.image->block_c, k.image->block_m, p.channels_per_group, p.hw_out),
                    "fusedconv.forward: resident config ", config, " holds ", str(int64_t{k.image->block_c}),
                    " channels x ", str(int64_t{k.image->block_m}), " positions per group, but a group here has ",
                    str(int64_t{p.channels_per_group}), " x ", str(p.hw_out));
  launch(k, p.n * p.num_groups, p.stream,
         {.x_ptr = p.x, .w_ptr = p.weight, .conv_bias_ptr = p.conv_bias, .bias_ptr = p.bias, .scale_ptr = p.scale,
          .gn_weight_ptr = p.gn_weight, .gn_bias_ptr = p.gn_bias, .y_ptr = p.y, .C_out = p.C_out, .H = p.H,
          .W = p.W, .W_out = p.W_out, .HW_out = p.HW_out, .KH = p.KH, .KW = p.KW, .K_total = p.K_total,
          .stride_xn = p.stride_xn, .stride_xc = p.stride_xc, .stride_xh = p.stride_xh, .stride_xw = p.stride_xw,
          .stride_h = p.stride_h, .stride_w = p.stride_w, .pad_h = p.pad_h, .pad_w = p.pad_w, .dil_h = p.dil_h,
          .dil_w = p.dil_w, .has_conv_bias = p.has_conv_bias, .num_groups = p.num_groups,
          .channels_per_group = p.channels_per_group, .has_gn_weight = p.has_gn_weight,
          .has_gn_bias = p.has_gn_bias, .eps = p.eps});
}

}  // namespace

int32_t i32(int64_t v, const char* what) {
  TORCH_CHECK_VALUE(v >= INT_MIN && v <= INT_MAX, "fusedconv.forward: ", what, " = ", str(v),
                    " exceeds the CUDA kernels' 32-bit per-sample indexing");
  return static_cast<int32_t>(v);
}

void run(const Problem& p, const Choice& choice) {
  switch (choice.algorithm) {
    case Algorithm::materialize: return run_nchw(p, choice.config, true);
    case Algorithm::recompute: return run_nchw(p, choice.config, false);
    case Algorithm::channels_last: return run_channels_last(p, choice.config);
    case Algorithm::resident: return run_resident(p, choice.config);
  }
}

}  // namespace fusedconv
