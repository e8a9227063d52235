#include "validate.h"

#include "format.h"

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <string>
#include <string_view>

namespace fusedconv {
namespace {

// torch's own names for dtypes (float32, int64: what Python users write and see in
// tensor.dtype), not ATen's (Float, Long), which are what streaming a ScalarType prints.
std::string dtype_name(at::ScalarType t) {
  const std::string_view name = c10::getDtypeNames(t).first;
  return name.empty() ? std::string(c10::toString(t)) : std::string(name);
}

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// int[2] arguments: the schema broadcasts a single int, C++ callers may pass one or two.
void read_pair(at::IntArrayRef values, const char* name, int64_t out[2]) {
  TORCH_CHECK_VALUE(values.size() == 1 || values.size() == 2, "fusedconv.forward: ", name,
                    " must hold 1 or 2 ints, got ", str(static_cast<int64_t>(values.size())));
  out[0] = values[0];
  out[1] = values.size() == 2 ? values[1] : values[0];
}

void check_same(const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "fusedconv.forward: ", name, " has dtype ",
                   dtype_name(t.scalar_type()), " but x has dtype ", dtype_name(x.scalar_type()),
                   "; all tensors must share x's dtype");
  TORCH_CHECK(t.device() == x.device(), "fusedconv.forward: ", name, " is on ", t.device(),
              " but x is on ", x.device(), "; all tensors must be on one device");
}

// bias and scale come as (C_out,) or, as the reference model holds them, (C_out, 1, 1).
void check_channel_param(const at::Tensor& t, const char* name, const c10::SymInt& c_out,
                         bool allow_c11) {
  const bool flat = t.dim() == 1 && t.sym_size(0) == c_out;
  const bool c11 = allow_c11 && t.dim() == 3 && t.sym_size(0) == c_out && t.sym_size(1) == 1 &&
                   t.sym_size(2) == 1;
  TORCH_CHECK_VALUE(flat || c11, "fusedconv.forward: ", name, " must have shape (C_out,)",
                    allow_c11 ? " or (C_out, 1, 1)" : "", " with C_out = ", str(c_out),
                    " (weight.shape[0]), got ", str(t.sym_sizes()));
}

}  // namespace

std::vector<c10::SymInt> check_forward_args(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& conv_bias,
    const at::Tensor& bias, const at::Tensor& scale, const std::optional<at::Tensor>& gn_weight,
    const std::optional<at::Tensor>& gn_bias, int64_t num_groups, double eps,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    ConvGeometry* geometry) {
  TORCH_CHECK_VALUE(x.dim() == 4, "fusedconv.forward: x must be 4-D [N, C_in, H, W], got ",
                    str(x.dim()), "-D with shape ", str(x.sym_sizes()));
  TORCH_CHECK_VALUE(weight.dim() == 4,
                    "fusedconv.forward: weight must be 4-D [C_out, C_in, KH, KW], got ", str(weight.dim()),
                    "-D with shape ", str(weight.sym_sizes()));
  TORCH_CHECK_TYPE(is_supported_dtype(x.scalar_type()),
                   "fusedconv.forward: x must be float32, float16 or bfloat16, got ",
                   dtype_name(x.scalar_type()));
  check_same(x, weight, "weight");
  check_same(x, bias, "bias");
  check_same(x, scale, "scale");
  if (conv_bias) check_same(x, *conv_bias, "conv_bias");
  if (gn_weight) check_same(x, *gn_weight, "gn_weight");
  if (gn_bias) check_same(x, *gn_bias, "gn_bias");

  const c10::SymInt& c_out = weight.sym_size(0);
  for (int d = 0; d < 4; ++d) {
    TORCH_CHECK_VALUE(weight.sym_size(d) > 0, "fusedconv.forward: weight must have no zero-sized "
                      "dimension, got shape ", str(weight.sym_sizes()));
  }
  TORCH_CHECK_VALUE(x.sym_size(1) == weight.sym_size(1), "fusedconv.forward: x has C_in = ",
                    str(x.sym_size(1)), " channels but weight expects ", str(weight.sym_size(1)),
                    " (weight.shape[1]); conv groups other than 1 are not supported");
  // ATen's conv rejects an empty image only on some paths (CPU yes, a padded CUDA launch would
  // normalize the padding alone): reject it here, for every device alike.
  TORCH_CHECK_VALUE(x.sym_size(2) > 0 && x.sym_size(3) > 0, "fusedconv.forward: x must have a "
                    "non-empty image (H, W > 0), got shape ", str(x.sym_sizes()));
  TORCH_CHECK_VALUE(num_groups > 0, "fusedconv.forward: num_groups must be positive, got ", str(num_groups));
  TORCH_CHECK_VALUE(c_out % num_groups == 0, "fusedconv.forward: num_groups = ", str(num_groups),
                    " must divide C_out = ", str(c_out), " (weight.shape[0])");
  // The CUDA kernels take eps as float32: a double past FLT_MAX would become inf there.
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0 && eps <= std::numeric_limits<float>::max(),
                    "fusedconv.forward: eps must be finite and >= 0 (and at most float32's max), got ", str(eps));
  check_channel_param(bias, "bias", c_out, /*allow_c11=*/true);
  check_channel_param(scale, "scale", c_out, /*allow_c11=*/true);
  if (conv_bias) check_channel_param(*conv_bias, "conv_bias", c_out, /*allow_c11=*/false);
  if (gn_weight) check_channel_param(*gn_weight, "gn_weight", c_out, /*allow_c11=*/false);
  if (gn_bias) check_channel_param(*gn_bias, "gn_bias", c_out, /*allow_c11=*/false);

  ConvGeometry g{};
  read_pair(stride, "stride", g.stride);
  read_pair(padding, "padding", g.padding);
  read_pair(dilation, "dilation", g.dilation);
  const char* axis[2] = {"height", "width"};
  std::vector<c10::SymInt> out_shape{x.sym_size(0), c_out};
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK_VALUE(g.stride[i] > 0, "fusedconv.forward: stride must be positive, got ", str(stride));
    TORCH_CHECK_VALUE(g.dilation[i] > 0, "fusedconv.forward: dilation must be positive, got ", str(dilation));
    TORCH_CHECK_VALUE(g.padding[i] >= 0, "fusedconv.forward: padding must be >= 0, got ", str(padding));
    const c10::SymInt padded = x.sym_size(2 + i) + 2 * g.padding[i];
    const c10::SymInt extent = (weight.sym_size(2 + i) - 1) * g.dilation[i] + 1;
    TORCH_CHECK_VALUE(extent <= padded, "fusedconv.forward: the kernel's ", axis[i], " (", str(extent),
                      " with dilation) exceeds the padded input's (", str(padded), "); weight has shape ",
                      str(weight.sym_sizes()), ", x has shape ", str(x.sym_sizes()));
    out_shape.push_back((padded - extent) / g.stride[i] + 1);
  }
  if (geometry) *geometry = g;
  return out_shape;
}

}  // namespace fusedconv
