// CPU: the reference math as a composite of ATen ops, in fp32 for every input dtype, so the op
// works everywhere and CI can test it.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "forward.h"
#include "validate.h"

namespace fusedconv {

at::Tensor forward_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& conv_bias,
                       const at::Tensor& bias, const at::Tensor& scale, const std::optional<at::Tensor>& gn_weight,
                       const std::optional<at::Tensor>& gn_bias, int64_t num_groups, double eps,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  ConvGeometry g;
  const auto shape = check_forward_args(x, weight, conv_bias, bias, scale, gn_weight, gn_bias,
                                        num_groups, eps, stride, padding, dilation, &g);
  const auto out_shape = C10_AS_INTARRAYREF_SLOW(shape);
  if (x.size(0) == 0) return at::empty(out_shape, x.options());

  auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat); };
  auto f32_opt = [&](const std::optional<at::Tensor>& t) {
    return t ? std::optional<at::Tensor>(f32(*t)) : std::nullopt;
  };
  const int64_t c_out = weight.size(0);
  at::Tensor y = at::conv2d(f32(x), f32(weight), f32_opt(conv_bias), {g.stride[0], g.stride[1]},
                            {g.padding[0], g.padding[1]}, {g.dilation[0], g.dilation[1]});
  y = at::sigmoid((y + f32(bias).reshape({1, c_out, 1, 1})) * f32(scale).reshape({1, c_out, 1, 1}));
  y = at::group_norm(y, num_groups, f32_opt(gn_weight), f32_opt(gn_bias), eps);
  return y.to(x.scalar_type()).contiguous();
}

TORCH_LIBRARY_IMPL(fusedconv, CPU, m) {
  m.impl("forward", &forward_cpu);
  m.impl("_forward_differentiable", &forward_cpu);
}

}  // namespace fusedconv
