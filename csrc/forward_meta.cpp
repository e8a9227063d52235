// The fake kernel: shape and dtype only, through the same validation as the real kernels, so
// torch.compile and torch.export (Python or AOTInductor in C++) see the errors users would.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "forward.h"
#include "validate.h"

namespace fusedconv {

at::Tensor forward_meta(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& conv_bias,
                        const at::Tensor& bias, const at::Tensor& scale, const std::optional<at::Tensor>& gn_weight,
                        const std::optional<at::Tensor>& gn_bias, int64_t num_groups, double eps,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto shape = check_forward_args(x, weight, conv_bias, bias, scale, gn_weight, gn_bias,
                                        num_groups, eps, stride, padding, dilation, nullptr);
  return at::empty_symint(shape, x.options().memory_format(at::MemoryFormat::Contiguous));
}

TORCH_LIBRARY_IMPL(fusedconv, Meta, m) {
  m.impl("forward", &forward_meta);
  m.impl("_forward_differentiable", &forward_meta);
}

}  // namespace fusedconv
