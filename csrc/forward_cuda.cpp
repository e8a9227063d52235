// CUDA: launches the AOT-compiled Triton kernels through the driver API on torch's current
// stream. No Triton, no Python and no CUDA runtime on this path; the op library is built
// against any torch (a CPU-only one too) and finds the CUDA stream through c10's device
// guard interface, which a CUDA build of torch registers.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <climits>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "autotune.h"
#include "cuda_driver.h"
#include "format.h"
#include "forward.h"
#include "kernel_registry.h"
#include "validate.h"

namespace fusedconv {
namespace {

std::mutex g_config_mutex;
std::string g_forced_config;
std::string g_forced_algorithm;

const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "fp32";
    case at::kHalf: return "fp16";
    default: return "bf16";
  }
}

// fp32 is accurate unless the user opted into TF32 the way PyTorch users do:
// torch.set_float32_matmul_precision("high" or "medium").
const char* precision_mode(at::ScalarType t) {
  if (t != at::kFloat) return "native";
  return at::globalContext().float32MatmulPrecision() == at::Float32MatmulPrecision::HIGHEST
             ? "accurate" : "tf32";
}

// Block config heuristic, from the config sweeps on the H200 (docs/performance.md, v4, v5, v7,
// v10): the channel tile follows C_out, because each channel block redoes the whole x gather;
// the benchmark's 32 channels on wide images get the row tile (1 x 128; 1 x 256 in the fp16
// and bf16 channels-last kernels) whose first 5 K steps (K <= 80 in one pass) are unrolled at
// compile time, on images wide enough to fill 3/4 of the wider tile.
std::string conv_config_heuristic(int64_t c_out, int64_t w_out, bool channels_last) {
  if (c_out <= 16) return "h4w32_c16";
  if (c_out >= 64 || w_out < (channels_last ? 192 : 96)) return "h2w32_c64";
  return "row_c32_k5";
}

// The test and tuning overrides, read together under one lock (once per call).
struct Overrides {
  std::string config, algorithm;
};
Overrides overrides() {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  return {g_forced_config, g_forced_algorithm};
}

// The resident kernel runs one program per (sample, group) at FP32-unit speed: it beats the
// tiled algorithms' three launches while its programs fit about one wave and its arithmetic is
// small (H200: 1x8x32x32 -> 32 takes 1 launch instead of 3; at batch 128 the tiled
// kernels win 2x; docs/performance.md).
constexpr int64_t kResidentMaxPrograms = 256;
constexpr int64_t kResidentMaxMacs = int64_t{1} << 26;

// The resident config of this name, the smallest one that holds a whole group (name ""), or
// nullptr. Runs on every call, so it walks a list of the resident images made once.
const KernelImage* resident_image(const ImageSet& set, const char* dtype, const std::string& name,
                                  int64_t channels_per_group, int64_t hw_out) {
  static const std::vector<const KernelImage*> residents = [] {
    std::vector<const KernelImage*> v;
    for (size_t i = 0; i < kNumKernelImages; ++i) {
      if (!std::strcmp(kKernelImages[i].kernel, "conv_resident")) v.push_back(&kKernelImages[i]);
    }
    return v;
  }();
  const KernelImage* best = nullptr;
  for (const KernelImage* image : residents) {
    const KernelImage& k = *image;
    if (k.arch != set.arch || k.format != set.format || std::strcmp(k.dtype, dtype)) continue;
    if (!name.empty()) {
      if (name == k.config) return &k;
    } else if (k.block_c >= channels_per_group && k.block_m >= hw_out &&
               (!best || int64_t{k.block_m} * k.block_c < int64_t{best->block_m} * best->block_c)) {
      best = &k;
    }
  }
  return best;
}

struct Kernel {
  CUfunction function;
  const KernelImage* image;
};

// One module per (device, image), loaded on first use into the device's primary context
// (PTX is JIT-compiled by the driver then, once) and kept for the process's lifetime.
Kernel load(int device, const KernelImage& image) {
  static std::mutex mutex;
  static std::map<std::pair<int, const KernelImage*>, CUfunction> loaded;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = loaded.find({device, &image});
  if (it != loaded.end()) return {it->second, &image};
  const cu::Driver& d = cu::driver();
  // A first call inside a CUDA graph capture must still load its module: module loading is not
  // stream work, but a capture in "global" mode (torch's default) forbids it on every thread
  // unless this thread relaxes its own mode for the duration.
  struct RelaxedCapture {
    const cu::Driver& d;
    CUstreamCaptureMode previous = CU_STREAM_CAPTURE_MODE_RELAXED;
    explicit RelaxedCapture(const cu::Driver& driver) : d(driver) {
      cu::check(d.ThreadExchangeStreamCaptureMode(&previous), "cuThreadExchangeStreamCaptureMode");
    }
    ~RelaxedCapture() { d.ThreadExchangeStreamCaptureMode(&previous); }
  } relaxed(d);
  CUmodule module;
  cu::check(d.ModuleLoadData(&module, image.data),
            image.format == ImageFormat::kPtx ? "cuModuleLoadData (JIT of the PTX)" : "cuModuleLoadData");
  CUfunction function;
  cu::check(d.ModuleGetFunction(&function, module, image.function), "cuModuleGetFunction");
  if (image.shared_bytes > 48 * 1024) {
    cu::check(d.FuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                 image.shared_bytes), "cuFuncSetAttribute");
  }
  loaded.emplace(std::make_pair(device, &image), function);
  return {function, &image};
}

void launch(const Kernel& k, int64_t grid, void** params, CUstream stream) {
  TORCH_CHECK_VALUE(grid <= INT_MAX, "fusedconv.forward: ", k.image->kernel, " needs ", str(grid),
                    " thread blocks, more than one launch allows; split the batch");
  cu::check(cu::driver().LaunchKernel(k.function, static_cast<unsigned>(grid), 1, 1,
                                      32 * k.image->num_warps, 1, 1, k.image->shared_bytes,
                                      stream, params, nullptr),
            k.image->kernel);
}

// The kernels index within one sample in 32 bits (only the batch offset is 64-bit).
int32_t i32(int64_t v, const char* what) {
  TORCH_CHECK_VALUE(v >= INT_MIN && v <= INT_MAX, "fusedconv.forward: ", what, " = ", str(v),
                    " exceeds the CUDA kernels' 32-bit per-sample indexing");
  return static_cast<int32_t>(v);
}

CUdeviceptr ptr(const at::Tensor& t) { return reinterpret_cast<CUdeviceptr>(t.data_ptr()); }

at::Tensor flat_contiguous(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

}  // namespace

// Four algorithms. "resident" (one launch, one program per (sample, group) holding the whole
// group in registers) when the group fits a resident config and the problem is small enough
// that launches and latency, not arithmetic, set its time. Otherwise "materialize" (conv once,
// stores fp32 values, normalizes them in a memory-bound pass), "recompute" (conv twice, y
// written once) or "channels_last" (recompute over a channels-last copy of x, whose conv tile
// gathers with 16-byte vector loads). channels_last wins for 16-bit inputs and TF32 when the
// input has at most 8 channels, one chunk of its copy (H200, benchmark shape: fp16 1.06 ms
// against materialize's 1.37; TF32 1.52 against 1.58). With more input channels the second
// conv costs more than materialize's extra bytes: on H100 materialize ran the UNet shapes
// (C_in 64-128) 1.2-1.9x faster in fp16 and TF32, and 14 of 16 shapes with C_in 16-64 too
// (docs/performance.md, v12). Accurate fp32, three TF32 products per MMA over 32-bit operands in
// shared memory, stays on materialize everywhere (1.76 against 2.12 ms; v10).
std::string default_algorithm(const std::string& mode, int64_t c_in) {
  TORCH_CHECK_VALUE(mode == "accurate" || mode == "tf32" || mode == "native",
                    "fusedconv: mode must be 'accurate', 'tf32' or 'native', got '", mode, "'");
  TORCH_CHECK_VALUE(c_in > 0, "fusedconv: c_in must be positive, got ", str(c_in));
  return mode == "accurate" || c_in > 8 ? "materialize" : "channels_last";
}

void set_forced_config(const std::string& config) {
  if (!config.empty()) {
    bool known = false;
    for (size_t i = 0; i < kNumKernelImages; ++i) {
      known |= (!std::strcmp(kKernelImages[i].kernel, "conv_stats") ||
                !std::strcmp(kKernelImages[i].kernel, "conv_resident")) &&
               config == kKernelImages[i].config;
    }
    TORCH_CHECK_VALUE(known, "fusedconv: no conv config named '", config, "' in this build");
  }
  std::lock_guard<std::mutex> lock(g_config_mutex);
  g_forced_config = config;
}

std::string forced_config() {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  return g_forced_config;
}

void set_forced_algorithm(const std::string& algorithm) {
  TORCH_CHECK_VALUE(algorithm.empty() || is_algorithm(algorithm),
                    "fusedconv: algorithm must be 'materialize', 'recompute', 'channels_last', 'resident' "
                    "or '' (the default), got '", algorithm, "'");
  std::lock_guard<std::mutex> lock(g_config_mutex);
  g_forced_algorithm = algorithm;
}

std::string forced_algorithm() {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  return g_forced_algorithm;
}

std::string chosen_config(int64_t c_out, int64_t w_out, bool channels_last) {
  const std::string forced = overrides().config;
  return forced.empty() ? conv_config_heuristic(c_out, w_out, channels_last) : forced;
}

std::string images_for_arch(int64_t arch) {
  const ImageSet set = choose_image_set(static_cast<int>(arch));
  return "sm_" + std::to_string(set.arch) + (set.format == ImageFormat::kPtx ? " PTX" : " cubin");
}

std::string device_images(int64_t device) {
  return images_for_arch(cu::device_arch(static_cast<int>(device)));
}

at::Tensor forward_cuda(FUSEDCONV_FORWARD_PARAMS) {
  ConvGeometry g;
  const auto shape = check_forward_args(x, weight, conv_bias, bias, scale, gn_weight, gn_bias,
                                        num_groups, eps, stride, padding, dilation, &g);
  at::Tensor y = at::empty(C10_AS_INTARRAYREF_SLOW(shape), x.options());
  const int64_t n = x.size(0);
  if (n == 0) return y;

  const int64_t c_in = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t c_out = weight.size(0), kh = weight.size(2), kw = weight.size(3);
  const int64_t h_out = y.size(2), w_out = y.size(3), hw_out = h_out * w_out;
  const int64_t k_total = c_in * kh * kw;
  const int64_t max_x_offset = (c_in - 1) * x.stride(1) + (h - 1) * x.stride(2) + (w - 1) * x.stride(3);
  i32(max_x_offset, "the largest offset within one sample of x");
  i32(c_out * hw_out, "C_out * H_out * W_out");
  i32(c_out * k_total, "weight.numel()");
  // The kernels decode k -> (ci, kh, kw) with an fp32 reciprocal, exact below 2^20.
  TORCH_CHECK_VALUE(k_total < (1 << 20), "fusedconv.forward: C_in * KH * KW = ", str(k_total),
                    " exceeds the CUDA kernels' limit of 2^20");

  c10::DeviceGuard device_guard(x.device());
  const int device = x.device().index();
  cu::ensure_context(device);
  const ImageSet set = choose_image_set(cu::device_arch(device));
  const char* dtype = dtype_name(x.scalar_type());
  const char* mode = precision_mode(x.scalar_type());
  const c10::Stream stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(x.device());
  CUstream s = static_cast<CUstream>(stream.native_handle());

  // Everything from here depends on the chosen variant, which autotuning may try in turn.
  const int64_t channels_per_group = c_out / num_groups;
  CUdeviceptr no_scratch = 0;  // Triton's global and profile scratch: the build asserts size 0
  int32_t a_c_out = i32(c_out, "C_out"), a_h = i32(h, "H"), a_w = i32(w, "W");
  int32_t a_h_out = i32(h_out, "H_out"), a_w_out = i32(w_out, "W_out");
  int32_t a_hw_out = i32(hw_out, "H_out * W_out");
  int32_t a_kh = i32(kh, "KH"), a_kw = i32(kw, "KW"), a_k_total = i32(k_total, "C_in * KH * KW");
  int64_t a_sxn = x.stride(0);
  int32_t a_sxc = i32(x.stride(1), "x.stride(1)"), a_sxh = i32(x.stride(2), "x.stride(2)");
  int32_t a_sxw = i32(x.stride(3), "x.stride(3)");
  int32_t a_sh = i32(g.stride[0], "stride"), a_sw = i32(g.stride[1], "stride");
  int32_t a_ph = i32(g.padding[0], "padding"), a_pw = i32(g.padding[1], "padding");
  int32_t a_dh = i32(g.dilation[0], "dilation"), a_dw = i32(g.dilation[1], "dilation");
  int32_t a_has_cb = conv_bias.has_value(), a_has_gw = gn_weight.has_value(), a_has_gb = gn_bias.has_value();
  int32_t a_groups = i32(num_groups, "num_groups"), a_cpg = i32(channels_per_group, "C_out / num_groups");
  float a_eps = static_cast<float>(eps);
  const at::Tensor w_c = flat_contiguous(weight), bias_c = flat_contiguous(bias), scale_c = flat_contiguous(scale);
  const at::Tensor cb_c = conv_bias ? flat_contiguous(*conv_bias) : bias_c;
  const at::Tensor gw_c = gn_weight ? flat_contiguous(*gn_weight) : bias_c;
  const at::Tensor gb_c = gn_bias ? flat_contiguous(*gn_bias) : bias_c;
  CUdeviceptr x_p = ptr(x), w_p = ptr(w_c), cb_p = ptr(cb_c), b_p = ptr(bias_c), s_p = ptr(scale_c);
  CUdeviceptr gw_p = ptr(gw_c), gb_p = ptr(gb_c), y_p = ptr(y);

  // The conv kernels' 3 x 3 flavour (TAPS = 3) skips bounds tests, valid only without padding,
  // and reads a row's taps at constant offsets, valid only for adjacent columns.
  const bool unpadded_3x3 = kh == 3 && kw == 3 && g.padding[0] == 0 && g.padding[1] == 0 &&
                            g.dilation[1] == 1 && x.stride(3) == 1;
  auto run = [&](const Choice& choice) {
    const std::string& config = choice.config;
    if (choice.algorithm == "resident") {
      const Kernel k = load(device, find_image(set, unpadded_3x3 ? "conv3x3_resident" : "conv_resident", dtype,
                                               "any", config.c_str()));
      TORCH_CHECK_VALUE(k.image->block_c >= channels_per_group && k.image->block_m >= hw_out,
                        "fusedconv.forward: resident config ", config, " holds ", str(int64_t{k.image->block_c}),
                        " channels x ", str(int64_t{k.image->block_m}), " positions per group, but a group here has ",
                        str(channels_per_group), " x ", str(hw_out));
      void* args[] = {&x_p, &w_p, &cb_p, &b_p, &s_p, &gw_p, &gb_p, &y_p,
                      &a_c_out, &a_h, &a_w, &a_w_out, &a_hw_out, &a_kh, &a_kw, &a_k_total,
                      &a_sxn, &a_sxc, &a_sxh, &a_sxw, &a_sh, &a_sw, &a_ph, &a_pw, &a_dh, &a_dw,
                      &a_has_cb, &a_groups, &a_cpg, &a_has_gw, &a_has_gb, &a_eps, &no_scratch, &no_scratch};
      launch(k, n * num_groups, args, s);
      return;
    }
    const bool store_v = choice.algorithm == "materialize";
    const bool cl = choice.algorithm == "channels_last";
    // The channels-last kernels' 3 x 3 flavour needs no padding only: x's strides are the
    // workspace's.
    const bool cl_3x3 = kh == 3 && kw == 3 && g.padding[0] == 0 && g.padding[1] == 0;
    const char* stats_name = cl ? (cl_3x3 ? "conv3x3_cl_stats" : "conv_cl_stats")
                             : unpadded_3x3 ? (store_v ? "conv3x3_stats_store" : "conv3x3_stats")
                                            : (store_v ? "conv_stats_store" : "conv_stats");
    // The tiling comes from the image; the module is loaded only for the image that runs (the
    // channels-last path may swap in its unit flavour, same config and tiles, below).
    const KernelImage& stats_image = find_image(set, stats_name, dtype, mode, config.c_str());

    const int64_t block_w = stats_image.block_w, block_h = stats_image.block_m / block_w;
    const int64_t block_c = stats_image.block_c;
    const int64_t num_th = (h_out + block_h - 1) / block_h, num_tw = (w_out + block_w - 1) / block_w;
    const int64_t num_p_tiles = num_th * num_tw;
    const int64_t num_c_blocks = (c_out + block_c - 1) / block_c;
    const int64_t grid = n * num_p_tiles * num_c_blocks;  // launch() checks every grid's size
    const int64_t group_run = channels_per_group * num_p_tiles;
    const Kernel group_k = load(device, find_image(set, "group_stats", "fp32", "any",
                                                   group_run >= 512 ? "b256" : "b64"));

    // One workspace: per-tile partial mean and M2, per-group (mean, rstd), and when
    // materializing a non-fp32 output, the fp32 values (an fp32 output holds its own).
    const int64_t n_part = n * c_out * num_p_tiles;
    const int64_t n_values = store_v && x.scalar_type() != at::kFloat ? n * c_out * hw_out : 0;
    at::Tensor workspace = at::empty({2 * n_part + 2 * n * num_groups + n_values},
                                     x.options().dtype(at::kFloat));
    CUdeviceptr part_mean = ptr(workspace);
    CUdeviceptr part_m2 = part_mean + n_part * sizeof(float);
    CUdeviceptr stats = part_m2 + n_part * sizeof(float);
    CUdeviceptr values = !store_v ? 0 : n_values ? stats + 2 * n * num_groups * sizeof(float) : ptr(y);

    int32_t a_th = i32(num_th, "tile rows"), a_tw = i32(num_tw, "tile columns");
    int32_t a_cblocks = i32(num_c_blocks, "channel blocks");
    int32_t a_block_h = i32(block_h, "BLOCK_H"), a_block_w = i32(block_w, "BLOCK_W");
    i32(channels_per_group * num_p_tiles, "a group's tile count");
    void* group_args[] = {&part_mean, &part_m2, &stats, &a_cpg, &a_h_out, &a_w_out, &a_th, &a_tw,
                          &a_block_h, &a_block_w, &a_eps, &no_scratch, &no_scratch};

    if (cl) {
      // x copied to [N, H, W, 8 * chunks] (channels past C_in zero) and the weight packed to
      // [C_out, chunks, taps rounded up to even, 8], both in one workspace of the input dtype
      // whose second part starts 16-byte aligned (the first holds a multiple of 8 elements).
      const int64_t chunks = (c_in + 7) / 8, taps = kh * kw, taps_even = taps + taps % 2;
      i32(h * w * 8 * chunks, "H * W * C_in rounded up to 8 (the channels-last copy of one sample)");
      const int64_t n_xt = n * h * w * 8 * chunks;
      at::Tensor cl_space = at::empty({n_xt + c_out * chunks * taps_even * 8}, x.options());
      CUdeviceptr xt = ptr(cl_space), wk = xt + n_xt * cl_space.element_size();
      int32_t a_c_in = i32(c_in, "C_in"), a_chunks = i32(chunks, "C_in / 8");
      int32_t a_taps = i32(taps, "KH * KW"), a_taps_even = i32(taps_even, "KH * KW");
      const Kernel copy_k = load(device, find_image(set, "to_channels_last", dtype, "any", w >= 128 ? "b256" : "b64"));
      const int64_t w_blocks = (w + copy_k.image->block_w - 1) / copy_k.image->block_w;
      int32_t a_w_blocks = i32(w_blocks, "column blocks");
      void* copy_args[] = {&x_p, &xt, &a_c_in, &a_h, &a_w, &a_sxn, &a_sxc, &a_sxh, &a_sxw, &a_chunks,
                           &a_w_blocks, &no_scratch, &no_scratch};
      launch(copy_k, n * h * w_blocks, copy_args, s);
      const Kernel pack_k = load(device, find_image(set, "pack_weight", dtype, "any", taps_even > 8 ? "b16" : "b8"));
      void* pack_args[] = {&w_p, &wk, &a_c_in, &a_taps, &a_taps_even, &a_chunks, &no_scratch, &no_scratch};
      launch(pack_k, c_out * chunks, pack_args, s);
      // The unit flavour compiles in the benchmark-like facts; every one is checked here (the
      // workspace pointers are aligned by construction once C_out % 16 == 0).
      const bool aligned = ((cb_p | b_p | s_p | gw_p | gb_p | y_p | xt | wk | part_mean | part_m2 | stats) % 16) == 0;
      const bool unit = cl_3x3 && chunks == 1 && num_c_blocks == 1 && c_out % 16 == 0 && aligned &&
                        g.stride[0] == 1 && g.stride[1] == 1 && g.dilation[0] == 1 && g.dilation[1] == 1;
      const Kernel stats_k = load(device, unit ? find_image(set, "conv3x3_cl_unit_stats", dtype, mode, config.c_str())
                                               : stats_image);
      // Argument order is the kernels' parameter order in triton_kernels/conv_sigmoid_groupnorm.py.
      void* stats_args[] = {&xt, &wk, &cb_p, &b_p, &s_p, &part_mean, &part_m2,
                            &a_c_out, &a_h, &a_w, &a_h_out, &a_w_out, &a_kh, &a_kw, &a_chunks,
                            &a_sh, &a_sw, &a_ph, &a_pw, &a_dh, &a_dw,
                            &a_th, &a_tw, &a_cblocks, &a_has_cb, &no_scratch, &no_scratch};
      launch(stats_k, grid, stats_args, s);
      launch(group_k, n * num_groups, group_args, s);
      const char* norm_name = unit ? "conv3x3_cl_unit_norm" : cl_3x3 ? "conv3x3_cl_norm" : "conv_cl_norm";
      const Kernel norm_k = load(device, find_image(set, norm_name, dtype, mode, config.c_str()));
      void* norm_args[] = {&xt, &wk, &cb_p, &b_p, &s_p, &gw_p, &gb_p, &stats, &y_p,
                           &a_c_out, &a_h, &a_w, &a_h_out, &a_w_out, &a_kh, &a_kw, &a_chunks,
                           &a_sh, &a_sw, &a_ph, &a_pw, &a_dh, &a_dw,
                           &a_th, &a_tw, &a_cblocks, &a_has_cb, &a_groups, &a_cpg, &a_has_gw, &a_has_gb,
                           &no_scratch, &no_scratch};
      launch(norm_k, grid, norm_args, s);
      return;
    }

    // Argument order is the kernels' parameter order in triton_kernels/conv_sigmoid_groupnorm.py.
    void* stats_args[] = {&x_p, &w_p, &cb_p, &b_p, &s_p, &part_mean, &part_m2, &values,
                          &a_c_out, &a_h, &a_w, &a_h_out, &a_w_out, &a_kh, &a_kw, &a_k_total,
                          &a_sxn, &a_sxc, &a_sxh, &a_sxw, &a_sh, &a_sw, &a_ph, &a_pw, &a_dh, &a_dw,
                          &a_th, &a_tw, &a_cblocks, &a_has_cb, &no_scratch, &no_scratch};
    launch(load(device, stats_image), grid, stats_args, s);
    launch(group_k, n * num_groups, group_args, s);
    if (store_v) {
      const Kernel apply_k = load(device, find_image(set, "group_norm_apply", dtype, "any",
                                                     hw_out >= 512 ? "b512" : "b256"));
      const int64_t blocks_per_row = (hw_out + apply_k.image->block_m - 1) / apply_k.image->block_m;
      const int64_t apply_grid = n * c_out * blocks_per_row;
      int32_t a_blocks = static_cast<int32_t>(blocks_per_row);
      void* apply_args[] = {&values, &stats, &gw_p, &gb_p, &y_p, &a_c_out, &a_hw_out, &a_groups,
                            &a_cpg, &a_blocks, &a_has_gw, &a_has_gb, &no_scratch, &no_scratch};
      launch(apply_k, apply_grid, apply_args, s);
    } else {
      const Kernel norm_k = load(device, find_image(set, unpadded_3x3 ? "conv3x3_norm" : "conv_norm", dtype, mode,
                                                    config.c_str()));
      void* norm_args[] = {&x_p, &w_p, &cb_p, &b_p, &s_p, &gw_p, &gb_p, &stats, &y_p,
                           &a_c_out, &a_h, &a_w, &a_h_out, &a_w_out, &a_kh, &a_kw, &a_k_total,
                           &a_sxn, &a_sxc, &a_sxh, &a_sxw, &a_sh, &a_sw, &a_ph, &a_pw, &a_dh, &a_dw,
                           &a_th, &a_tw, &a_cblocks, &a_has_cb, &a_groups, &a_cpg, &a_has_gw, &a_has_gb,
                           &no_scratch, &no_scratch};
      launch(norm_k, grid, norm_args, s);
    }
  };

  // The default: resident for small problems it fits, else default_algorithm() with the
  // heuristic's config. A forced config or algorithm overrides its part; a forced resident that cannot
  // hold a group is an error, not a silent fallback.
  const KernelImage* resident = resident_image(set, dtype, "", channels_per_group, hw_out);
  const Overrides forced_overrides = overrides();
  const std::string& forced = forced_overrides.algorithm;
  const std::string& config = forced_overrides.config;
  const bool config_is_resident = !config.empty() && resident_image(set, dtype, config, 0, 0) != nullptr;
  Choice choice{default_algorithm(mode, c_in), config};
  if (forced == "resident" || (forced.empty() && config_is_resident)) {
    TORCH_CHECK_VALUE(config_is_resident || resident, "fusedconv.forward: the resident algorithm needs a group "
                      "that fits one of this build's resident configs (BLOCK_C channels x BLOCK_M positions, "
                      "see `python -m fusedconv info`); here a group has ", str(channels_per_group),
                      " channels x ", str(hw_out), " positions");
    choice = {"resident", config_is_resident ? config : resident->config};
  } else if (!forced.empty()) {
    choice.algorithm = forced;
  } else if (resident && n * num_groups <= kResidentMaxPrograms &&
             n * c_out * hw_out * k_total <= kResidentMaxMacs) {
    choice = {"resident", resident->config};
  }
  if (choice.config.empty()) choice.config = conv_config_heuristic(c_out, w_out, choice.algorithm == "channels_last");
  if (autotune_enabled() && forced_overrides.config.empty() && forced.empty()) {
    std::vector<Choice> candidates;
    for (const std::string& name : config_names(set, "conv_stats", dtype, mode)) {
      candidates.push_back({"materialize", name});
      candidates.push_back({"recompute", name});
      candidates.push_back({"channels_last", name});
    }
    if (resident) candidates.push_back({"resident", resident->config});
    const std::string key = device_images(device) + "|" + dtype + "|" + mode + "|" + str(x.sizes()) +
                            "|" + str(weight.sizes()) + "|" + str(at::IntArrayRef(g.stride, 2)) + "|" +
                            str(at::IntArrayRef(g.padding, 2)) + "|" + str(at::IntArrayRef(g.dilation, 2)) +
                            "|" + str(num_groups);
    autotuned_choice(key, candidates, run, s, &choice);
  }
  run(choice);
  return y;
}

TORCH_LIBRARY_IMPL(fusedconv, CUDA, m) {
  m.impl("forward", &forward_cuda);
  m.impl("_forward_differentiable", &forward_cuda);
}

}  // namespace fusedconv
