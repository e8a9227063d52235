// Numbers and shapes for error messages, formatted without iostreams.
//
// Why: built on the device machine (g++ 13, torch 2.11), streaming an integer into a
// TORCH_CHECK message crashed inside a std::ostream::_M_insert<long> instantiated in this
// library (gdb backtrace, 2026-11-21); strings, dtypes and devices streamed fine. So every
// number reaches a message as a std::string.
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
