// What the generated launchers (fusedconv_kernels.h, from build_scripts/codegen.py) are made of.
#pragma once

#include <type_traits>

namespace fusedconv {

enum class KernelName : int;

// One kernel argument in a launcher's Args struct. It has no default constructor, so a launch
// that leaves an argument out does not compile, and it takes exactly its own type, so a 64-bit
// value meant for a 32-bit argument is converted (and range-checked) by the caller, not
// narrowed silently. Call sites fill Args with designated initializers, which C++ also holds to
// the kernel's argument order and names.
template <typename T>
struct Arg {
  template <typename U, std::enable_if_t<std::is_same_v<U, T>, int> = 0>
  Arg(U v) : value(v) {}  // NOLINT(google-explicit-constructor): designated initializers need it
  T value;
};

// An image name tied to its kernel's launcher type: find and launch it with that kernel's Args.
template <typename Kernel>
struct KernelRef {
  KernelName name;
};

}  // namespace fusedconv
