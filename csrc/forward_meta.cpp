// The fake kernel: shape and dtype only, through the same validation as the real kernels, so
// torch.compile and torch.export (Python or AOTInductor in C++) see the errors users would.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "forward.h"
#include "validate.h"

namespace fusedconv {

at::Tensor forward_meta(FUSEDCONV_FORWARD_PARAMS) {
  const auto shape = check_forward_args(x, weight, conv_bias, bias, scale, gn_weight, gn_bias,
                                        num_groups, eps, stride, padding, dilation, nullptr);
  return at::empty_symint(shape, x.options().memory_format(at::MemoryFormat::Contiguous));
}

TORCH_LIBRARY_IMPL(fusedconv, Meta, m) {
  m.impl("forward", &forward_meta);
  m.impl("_forward_differentiable", &forward_meta);
}

}  // namespace fusedconv
