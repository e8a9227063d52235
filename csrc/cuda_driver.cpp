#include "cuda_driver.h"
#include "format.h"

#include <c10/util/Exception.h>
#include <dlfcn.h>

#include <mutex>
#include <vector>

namespace fusedconv::cu {
namespace {

// cuda.h maps some names to versioned symbols (cuCtxCreate -> cuCtxCreate_v2): resolve the
// name the header means, not the one we typed.
#define FC_STR2(x) #x
#define FC_STR(x) FC_STR2(x)

template <typename Fn>
void resolve(void* lib, Fn& fn, const char* name) {
  fn = reinterpret_cast<Fn>(dlsym(lib, name));
  TORCH_CHECK(fn != nullptr, "fusedconv: the CUDA driver lacks ", name, " (driver too old?)");
}

Driver load() {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) lib = dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL);
  TORCH_CHECK(lib != nullptr, "fusedconv: could not load the CUDA driver (libcuda.so.1): ", dlerror());
  Driver d{};
  resolve(lib, d.Init, FC_STR(cuInit));
  resolve(lib, d.GetErrorString, FC_STR(cuGetErrorString));
  resolve(lib, d.DeviceGet, FC_STR(cuDeviceGet));
  resolve(lib, d.DeviceGetAttribute, FC_STR(cuDeviceGetAttribute));
  resolve(lib, d.CtxGetCurrent, FC_STR(cuCtxGetCurrent));
  resolve(lib, d.CtxSetCurrent, FC_STR(cuCtxSetCurrent));
  resolve(lib, d.CtxGetDevice, FC_STR(cuCtxGetDevice));
  resolve(lib, d.DevicePrimaryCtxRetain, FC_STR(cuDevicePrimaryCtxRetain));
  resolve(lib, d.ModuleLoadData, FC_STR(cuModuleLoadData));
  resolve(lib, d.ModuleGetFunction, FC_STR(cuModuleGetFunction));
  resolve(lib, d.FuncSetAttribute, FC_STR(cuFuncSetAttribute));
  resolve(lib, d.LaunchKernel, FC_STR(cuLaunchKernel));
  resolve(lib, d.EventCreate, FC_STR(cuEventCreate));
  resolve(lib, d.EventRecord, FC_STR(cuEventRecord));
  resolve(lib, d.EventSynchronize, FC_STR(cuEventSynchronize));
  resolve(lib, d.EventElapsedTime, FC_STR(cuEventElapsedTime));
  resolve(lib, d.EventDestroy, FC_STR(cuEventDestroy));
  resolve(lib, d.StreamIsCapturing, FC_STR(cuStreamIsCapturing));
  resolve(lib, d.ThreadExchangeStreamCaptureMode, FC_STR(cuThreadExchangeStreamCaptureMode));
  CUresult r = d.Init(0);
  if (r != CUDA_SUCCESS) {
    const char* msg = nullptr;
    d.GetErrorString(r, &msg);
    TORCH_CHECK(false, "fusedconv: cuInit failed: ", msg ? msg : "unknown error");
  }
  return d;
}

}  // namespace

const Driver& driver() {
  static const Driver d = load();  // C++ guarantees one thread-safe initialisation
  return d;
}

void check(CUresult result, const char* what) {
  if (result == CUDA_SUCCESS) return;
  const char* name = nullptr;
  driver().GetErrorString(result, &name);
  TORCH_CHECK(false, "fusedconv: ", what, " failed: ", name ? name : "unknown CUDA error",
              " (CUresult ", str(static_cast<int64_t>(result)), ")");
}

void ensure_context(int device) {
  const Driver& d = driver();
  CUcontext current = nullptr;
  check(d.CtxGetCurrent(&current), "cuCtxGetCurrent");
  if (current != nullptr) {
    CUdevice current_device = -1;
    if (d.CtxGetDevice(&current_device) == CUDA_SUCCESS && current_device == device) return;
  }
  CUdevice dev;
  check(d.DeviceGet(&dev, device), "cuDeviceGet");
  CUcontext primary = nullptr;
  // Retained for the process's lifetime, as the CUDA runtime (and so PyTorch) does.
  check(d.DevicePrimaryCtxRetain(&primary, dev), "cuDevicePrimaryCtxRetain");
  check(d.CtxSetCurrent(primary), "cuCtxSetCurrent");
}

int device_arch(int device) {
  static std::mutex mutex;
  static std::vector<int> cache;
  std::lock_guard<std::mutex> lock(mutex);
  if (device >= static_cast<int>(cache.size())) cache.resize(device + 1, 0);
  if (cache[device] == 0) {
    const Driver& d = driver();
    CUdevice dev;
    check(d.DeviceGet(&dev, device), "cuDeviceGet");
    int major = 0, minor = 0;
    check(d.DeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cuDeviceGetAttribute");
    check(d.DeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cuDeviceGetAttribute");
    cache[device] = major * 10 + minor;
  }
  return cache[device];
}

}  // namespace fusedconv::cu
