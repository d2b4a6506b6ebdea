// Where a buffer lives and where an op runs. CUDA-free: the CUDA side is behind these functions.
#pragma once

#include <string>

namespace cumnist {

enum class Device { Cpu, Cuda };

const char* to_string(Device device);

// Why the GPU cannot be used, or an empty string when it can (driver present, a device visible,
// built with CUDA support).
std::string cuda_unavailable_reason();
inline bool cuda_available() { return cuda_unavailable_reason().empty(); }

// True when the CUDA driver reports at least one device, whether or not this build can use it
// (false in a build without CUDA, which cannot ask the driver). A device that is present while
// cuda_available() is false means a broken build or installation, not a machine without a GPU.
bool cuda_device_present();

// "NVIDIA H100 80GB HBM3 (compute 9.0, 79.1 GiB)" or the CPU's model name.
std::string device_name(Device device);

// True when cumnist was compiled with the CUDA backend.
bool built_with_cuda();

}  // namespace cumnist
