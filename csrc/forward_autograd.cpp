// Autograd for torch.ops.fusedconv.forward. Calls that need no gradient (inference, no_grad,
// inputs that do not require grad) go straight to the backend kernel with no Python on the way:
// on small inputs a Python autograd kernel cost ~4 us a call. Calls that need a gradient go
// through fusedconv::_forward_differentiable, the same op under another name, whose backward
// python/fusedconv/autograd.py registers (programs without Python get PyTorch's fallback).
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include "forward.h"

namespace fusedconv {
namespace {

bool requires_grad(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined() && t->requires_grad(); }

at::Tensor forward_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& conv_bias,
                            const at::Tensor& bias, const at::Tensor& scale,
                            const std::optional<at::Tensor>& gn_weight, const std::optional<at::Tensor>& gn_bias,
                            int64_t num_groups, double eps, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation) {
  const bool needs_grad = c10::GradMode::is_enabled() &&
                          (x.requires_grad() || weight.requires_grad() || requires_grad(conv_bias) ||
                           bias.requires_grad() || scale.requires_grad() || requires_grad(gn_weight) ||
                           requires_grad(gn_bias));
  if (needs_grad) {
    static const auto differentiable = c10::Dispatcher::singleton()
        .findSchemaOrThrow("fusedconv::_forward_differentiable", "").typed<ForwardFn>();
    return differentiable.call(x, weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups, eps,
                               stride, padding, dilation);
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  static const auto forward = c10::Dispatcher::singleton()
      .findSchemaOrThrow("fusedconv::forward", "").typed<ForwardFn>();
  return forward.call(x, weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups, eps, stride,
                      padding, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedconv, Autograd, m) { m.impl("forward", &forward_autograd); }

}  // namespace fusedconv
