// Device names and the memory primitives behind Buffer<T>, dispatched to the host or to CUDA.
#include <sys/sysinfo.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <new>
#include <string>

#include "cumnist/buffer.h"
#include "cumnist/device.h"
#include "core/cuda_host.h"

namespace cumnist {

const char* to_string(Device device) { return device == Device::Cpu ? "cpu" : "cuda"; }

std::string cuda_unavailable_reason() { return cuda::unavailable_reason(); }

bool cuda_device_present() { return cuda::device_present(); }

bool built_with_cuda() {
#ifdef CUMNIST_WITH_CUDA
    return true;
#else
    return false;
#endif
}

namespace {
std::string cpu_model_name() {
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line)) {
        if (line.rfind("model name", 0) == 0) {
            const auto colon = line.find(':');
            if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
        }
    }
    return "unknown CPU";
}
}  // namespace

std::string device_name(Device device) {
    return device == Device::Cpu ? cpu_model_name() : cuda::device_description();
}

namespace memory {

namespace {
constexpr std::size_t kHostAlignment = 64;
constexpr std::size_t kNoLimit = std::numeric_limits<std::size_t>::max();
std::atomic<std::size_t> g_allocations{0};

// RAM plus swap, in bytes (kNoLimit when unknown).
std::size_t host_memory_limit() {
    struct sysinfo info {};
    if (::sysinfo(&info) != 0 || info.mem_unit == 0) return kNoLimit;
    const unsigned long long units = static_cast<unsigned long long>(info.totalram) + info.totalswap;
    if (units > kNoLimit / info.mem_unit) return kNoLimit;
    return static_cast<std::size_t>(units * info.mem_unit);
}

std::string gib(std::size_t bytes) {
    return fmt::format("{:.1f} GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
}
}  // namespace

std::size_t allocation_count() { return g_allocations.load(std::memory_order_relaxed); }

void* allocate_staging(std::size_t bytes, Device device) {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    if (device == Device::Cuda) return cuda::allocate_pinned(bytes);  // throws with CUDA's reason
    void* p = std::malloc(bytes ? bytes : 1);
    if (p == nullptr) throw Error(fmt::format("out of host memory allocating {} bytes of staging slots", bytes));
    return p;
}

void release_staging(void* ptr, Device device) noexcept {
    if (device == Device::Cuda) cuda::release_pinned(ptr);
    else std::free(ptr);
}

void* allocate(std::size_t bytes, Device device) {
    if (bytes == 0) return nullptr;
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    if (device == Device::Cuda) return cuda::allocate(bytes);
    // More than the RAM and swap could hold is refused up front: with overcommit it might be
    // granted, and the process killed when the buffer is filled.
    static const std::size_t limit = host_memory_limit();
    void* p = nullptr;
    if (bytes <= limit && bytes <= std::numeric_limits<std::size_t>::max() - kHostAlignment) {
        const std::size_t rounded = (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
        p = std::aligned_alloc(kHostAlignment, rounded);
    }
    if (!p)
        throw Error(fmt::format("out of host memory: cannot allocate {} bytes ({}; this machine has {} of RAM and "
                                "swap); try a smaller batch size (--batch-size) or model (--hidden)",
                                bytes, gib(bytes), limit == kNoLimit ? std::string("an unknown amount") : gib(limit)));
    return p;
}

void release(void* ptr, Device device) noexcept {
    if (!ptr) return;
    if (device == Device::Cuda)
        cuda::release(ptr);
    else
        std::free(ptr);
}

void copy(void* dst, Device dst_device, const void* src, Device src_device, std::size_t bytes) {
    if (bytes == 0) return;
    if (dst_device == Device::Cpu && src_device == Device::Cpu)
        std::memcpy(dst, src, bytes);
    else
        cuda::copy(dst, dst_device == Device::Cuda, src, src_device == Device::Cuda, bytes);
}

void zero(void* ptr, Device device, std::size_t bytes) {
    if (bytes == 0) return;
    if (device == Device::Cpu)
        std::memset(ptr, 0, bytes);
    else
        cuda::zero(ptr, bytes);
}

}  // namespace memory
}  // namespace cumnist
