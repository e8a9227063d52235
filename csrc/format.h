// Numbers and shapes for error messages, formatted without iostreams.
//
// Why: a library built with a compiler that links its own copy of libstdc++'s internals
// (seen: the device image's CXX=/opt/gcc/bin/g++) crashed inside std::ostream::_M_insert<long>
// the first time a number was streamed into a TORCH_CHECK message next to libtorch's shared
// libstdc++ (gdb, 2026-11-21). tests/test_build.py now rejects such a build; formatting
// numbers without iostreams keeps error paths safe regardless.
#pragma once

#include <c10/core/SymInt.h>
#include <c10/util/ArrayRef.h>

#include <cstdio>
#include <string>

namespace fusedconv {

inline std::string str(int64_t v) { return std::to_string(v); }

inline std::string str(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

inline std::string str(const c10::SymInt& s) {
  if (auto v = s.maybe_as_int()) return std::to_string(*v);
  return s.toSymNodeImplUnowned()->str();
}

template <typename T>
std::string str(c10::ArrayRef<T> values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + str(values[i]);
  return out + "]";
}

}  // namespace fusedconv
