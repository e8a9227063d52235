// CUDA: launches the AOT-compiled Triton kernels through the driver API on torch's current
// stream. No Triton, no Python and no CUDA runtime on this path; the op library is built
// against any torch (a CPU-only one too) and finds the CUDA stream through c10's device
// guard interface, which a CUDA build of torch registers.
//   forward_cuda: arguments checked and laid out as a Problem -> policy.cpp chooses (or the
//   autotuner does) -> launch.cpp runs the chosen algorithm.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "autotune.h"
#include "cuda_driver.h"
#include "format.h"
#include "forward.h"
#include "fusedconv_rules.h"
#include "kernel_registry.h"
#include "launch.h"
#include "policy.h"
#include "validate.h"

namespace fusedconv {
namespace {

const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "fp32";
    case at::kHalf: return "fp16";
    default: return "bf16";
  }
}

at::Tensor flat_contiguous(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

// The parameters as the kernels read them: contiguous, absent ones replaced by `bias` (never
// read: the has_* flags say so). Held here so they outlive the launches.
struct Parameters {
  at::Tensor weight, bias, scale, conv_bias, gn_weight, gn_bias;
};

// The autotuner's cache key: everything that can change the fastest choice.
std::string tuning_key(const Problem& p, const at::Tensor& x, const at::Tensor& weight, const ConvGeometry& g,
                       int64_t num_groups) {
  return describe_image_set(p.set) + "|" + p.dtype + "|" + p.mode + "|" + str(x.sizes()) + "|" +
         str(weight.sizes()) + "|" + str(at::IntArrayRef(g.stride, 2)) + "|" + str(at::IntArrayRef(g.padding, 2)) +
         "|" + str(at::IntArrayRef(g.dilation, 2)) + "|" + str(num_groups);
}

}  // namespace

std::string images_for_arch(int64_t arch) {
  return describe_image_set(choose_image_set(static_cast<int>(arch)));
}

std::string device_images(int64_t device) {
  return images_for_arch(cu::device_arch(static_cast<int>(device)));
}

at::Tensor forward_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& conv_bias,
                        const at::Tensor& bias, const at::Tensor& scale, const std::optional<at::Tensor>& gn_weight,
                        const std::optional<at::Tensor>& gn_bias, int64_t num_groups, double eps,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  ConvGeometry g;
  const auto shape = check_forward_args(x, weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups, eps,
                                        stride, padding, dilation, &g);
  at::Tensor y = at::empty(C10_AS_INTARRAYREF_SLOW(shape), x.options());
  if (x.size(0) == 0) return y;

  c10::DeviceGuard device_guard(x.device());
  const int device = x.device().index();
  cu::ensure_context(device);
  const c10::Stream stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(x.device());

  Parameters params{flat_contiguous(weight), flat_contiguous(bias), flat_contiguous(scale), {}, {}, {}};
  params.conv_bias = conv_bias ? flat_contiguous(*conv_bias) : params.bias;
  params.gn_weight = gn_weight ? flat_contiguous(*gn_weight) : params.bias;
  params.gn_bias = gn_bias ? flat_contiguous(*gn_bias) : params.bias;

  Problem p;
  p.device = device;
  p.set = choose_image_set(cu::device_arch(device));
  p.dtype = dtype_name(x.scalar_type());
  p.mode = rules::precision_mode(p.dtype, at::globalContext().float32MatmulPrecision() ==
                                              at::Float32MatmulPrecision::HIGHEST).data();
  p.stream = static_cast<CUstream>(stream.native_handle());
  p.x_options = x.options();
  p.fp32 = x.scalar_type() == at::kFloat;
  p.n = x.size(0), p.c_in = x.size(1), p.h = x.size(2), p.w = x.size(3);
  p.c_out = weight.size(0), p.kh = weight.size(2), p.kw = weight.size(3);
  p.h_out = y.size(2), p.w_out = y.size(3), p.hw_out = p.h_out * p.w_out;
  p.x_stride_w = x.stride(3);
  const int64_t k_total = p.c_in * p.kh * p.kw;
  i32((p.c_in - 1) * x.stride(1) + (p.h - 1) * x.stride(2) + (p.w - 1) * x.stride(3),
      "the largest offset within one sample of x");
  i32(p.c_out * p.hw_out, "C_out * H_out * W_out");
  i32(p.c_out * k_total, "weight.numel()");
  // The kernels decode k -> (ci, kh, kw) with an fp32 reciprocal, exact below 2^20.
  TORCH_CHECK_VALUE(k_total < (1 << 20), "fusedconv.forward: C_in * KH * KW = ", str(k_total),
                    " exceeds the CUDA kernels' limit of 2^20");

  p.x = ptr(x), p.weight = ptr(params.weight), p.conv_bias = ptr(params.conv_bias), p.bias = ptr(params.bias);
  p.scale = ptr(params.scale), p.gn_weight = ptr(params.gn_weight), p.gn_bias = ptr(params.gn_bias), p.y = ptr(y);
  p.C_in = i32(p.c_in, "C_in"), p.C_out = i32(p.c_out, "C_out"), p.H = i32(p.h, "H"), p.W = i32(p.w, "W");
  p.H_out = i32(p.h_out, "H_out"), p.W_out = i32(p.w_out, "W_out"), p.HW_out = i32(p.hw_out, "H_out * W_out");
  p.KH = i32(p.kh, "KH"), p.KW = i32(p.kw, "KW"), p.K_total = i32(k_total, "C_in * KH * KW");
  p.stride_xn = x.stride(0);
  p.stride_xc = i32(x.stride(1), "x.stride(1)"), p.stride_xh = i32(x.stride(2), "x.stride(2)");
  p.stride_xw = i32(x.stride(3), "x.stride(3)");
  p.stride_h = i32(g.stride[0], "stride"), p.stride_w = i32(g.stride[1], "stride");
  p.pad_h = i32(g.padding[0], "padding"), p.pad_w = i32(g.padding[1], "padding");
  p.dil_h = i32(g.dilation[0], "dilation"), p.dil_w = i32(g.dilation[1], "dilation");
  p.has_conv_bias = conv_bias.has_value(), p.has_gn_weight = gn_weight.has_value();
  p.has_gn_bias = gn_bias.has_value();
  p.num_groups = i32(num_groups, "num_groups"), p.channels_per_group = i32(p.c_out / num_groups, "C_out / num_groups");
  p.eps = static_cast<float>(eps);

  std::vector<Choice> candidates;
  Choice choice = choose({p.set, p.dtype, p.mode, p.n, p.c_in, p.c_out, p.w_out, p.hw_out, k_total, num_groups,
                          p.kh, p.kw, p.pad_h, p.pad_w, p.stride_h, p.stride_w, p.dil_h, p.dil_w, p.x_stride_w},
                         &candidates);
  if (!candidates.empty()) {
    const auto tuned = autotuned_choice(tuning_key(p, x, weight, g, num_groups), candidates,
                                        [&](const Choice& c) { run(p, c); }, p.stream);
    if (tuned) choice = *tuned;
  }
  run(p, choice);
  return y;
}

TORCH_LIBRARY_IMPL(fusedconv, CUDA, m) {
  m.impl("forward", &forward_cuda);
  m.impl("_forward_differentiable", &forward_cuda);
}

}  // namespace fusedconv
