// The CUDA driver API, opened lazily with dlopen: importing fusedconv and its CPU path work on
// machines with no driver, and the op library links no CUDA library.
#pragma once

#include <cuda.h>  // types and constants only (Triton's wheel ships this header)

namespace fusedconv::cu {

struct Driver {
  decltype(&::cuInit) Init;
  decltype(&::cuGetErrorString) GetErrorString;
  decltype(&::cuDeviceGet) DeviceGet;
  decltype(&::cuDeviceGetAttribute) DeviceGetAttribute;
  decltype(&::cuCtxGetCurrent) CtxGetCurrent;
  decltype(&::cuCtxSetCurrent) CtxSetCurrent;
  decltype(&::cuCtxGetDevice) CtxGetDevice;
  decltype(&::cuDevicePrimaryCtxRetain) DevicePrimaryCtxRetain;
  decltype(&::cuModuleLoadData) ModuleLoadData;
  decltype(&::cuModuleGetFunction) ModuleGetFunction;
  decltype(&::cuFuncSetAttribute) FuncSetAttribute;
  decltype(&::cuLaunchKernel) LaunchKernel;
  decltype(&::cuEventCreate) EventCreate;
  decltype(&::cuEventRecord) EventRecord;
  decltype(&::cuEventSynchronize) EventSynchronize;
  decltype(&::cuEventElapsedTime) EventElapsedTime;
  decltype(&::cuEventDestroy) EventDestroy;
  decltype(&::cuStreamIsCapturing) StreamIsCapturing;
  decltype(&::cuThreadExchangeStreamCaptureMode) ThreadExchangeStreamCaptureMode;
};

// Loads libcuda.so.1 and cuInit()s once, thread-safely; throws a clear error without a driver.
const Driver& driver();

// Throws with the driver's own message when `result` is not CUDA_SUCCESS.
void check(CUresult result, const char* what);

// Makes `device`'s primary context current on this thread unless it already is.
void ensure_context(int device);

// Compute capability as 10 * major + minor, e.g. 89.
int device_arch(int device);

}  // namespace fusedconv::cu
