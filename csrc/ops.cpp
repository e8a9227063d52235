// The op's schema: one TORCH_LIBRARY block. Implementations register per dispatch key in
// forward_cpu.cpp, forward_cuda.cpp and forward_meta.cpp.
#include <torch/library.h>

#include "autotune.h"
#include "forward.h"
#include "kernel_registry.h"
#include "policy.h"

namespace fusedconv {
namespace {

std::string build_report() { return kBuildReportJson; }

}  // namespace

TORCH_LIBRARY(fusedconv, m) {
  m.def(
      "forward(Tensor x, Tensor weight, Tensor? conv_bias, Tensor bias, Tensor scale, "
      "Tensor? gn_weight, Tensor? gn_bias, int num_groups, float eps=1e-05, "
      "int[2] stride=1, int[2] padding=0, int[2] dilation=1) -> Tensor");
  // forward's autograd kernel (forward_autograd.cpp) routes calls that need a gradient here:
  // the same op, carrying the backward that Python registers.
  m.def(
      "_forward_differentiable(Tensor x, Tensor weight, Tensor? conv_bias, Tensor bias, Tensor scale, "
      "Tensor? gn_weight, Tensor? gn_bias, int num_groups, float eps=1e-05, "
      "int[2] stride=1, int[2] padding=0, int[2] dilation=1) -> Tensor");
  // JSON: versions, archs, and every image's config, registers, spills and shared memory.
  m.def("build_report() -> str", &build_report);
  m.def("_set_config(str config) -> ()", &set_forced_config);
  m.def("_get_config() -> str", &forced_config);
  m.def("_set_algorithm(str algorithm) -> ()", &set_forced_algorithm);
  m.def("_get_algorithm() -> str", &forced_algorithm);
  m.def("_set_plain_triton(bool plain) -> ()", &set_plain_triton);
  m.def("_get_plain_triton() -> bool", &plain_triton);
  m.def("_device_images(int device) -> str", &device_images);
  m.def("_images_for_arch(int arch) -> str", &images_for_arch);
  m.def("_default_algorithm(str mode, int c_in) -> str", &default_algorithm);
  m.def("_conv_config(int c_out, int w_out, bool channels_last=False) -> str", &chosen_config);
  m.def("_set_autotune(bool enabled, str cache_file=\"\") -> ()", &set_autotune);
  m.def("_autotune_entries() -> str", &autotune_entries);
}

}  // namespace fusedconv
