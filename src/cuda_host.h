// Host-side control of the CUDA backend that is not a numeric op: device discovery, memory,
// the compute stream and CUDA Graph capture. CUDA-free declarations; implemented in
// kernels/cuda_context.cu, or by kernels/cuda_stubs.cpp (every call throws "built without CUDA
// support") in a build without CUDA.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace cumnist::cuda {

// Empty when a GPU is usable; otherwise why not ("built without CUDA support", "no CUDA driver
// found: ...", "no CUDA device visible", ...). Never throws.
std::string unavailable_reason();

// "NVIDIA H100 80GB HBM3, compute capability 9.0, 79.1 GiB" for the current device.
std::string device_description();

// cudaMalloc / cudaFree. Out of memory throws cumnist::Error naming the bytes requested and the
// free/total memory.
void* allocate(std::size_t bytes);
void release(void* ptr) noexcept;

// Page-locked host memory for async copies.
void* allocate_pinned(std::size_t bytes);
void release_pinned(void* ptr) noexcept;

// Copies on the compute stream, then waits for the stream: for use outside the training step.
void copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, std::size_t bytes);
void zero(void* ptr, std::size_t bytes);

// Waits until all work queued on the compute stream has finished; rethrows asynchronous errors.
void synchronize();

// TF32 tensor-core math for the GEMMs (off by default: CUBLAS_DEFAULT_MATH).
void set_tf32(bool enabled);

// A training step captured once as a CUDA Graph and replayed. capture() runs `step` under stream
// capture on the compute stream (so every op it calls is recorded, not executed), then
// instantiates the graph. launch() replays it on the compute stream without synchronising.
class StepGraph {
public:
    StepGraph();
    ~StepGraph();
    StepGraph(StepGraph&&) noexcept;
    StepGraph& operator=(StepGraph&&) noexcept;
    StepGraph(const StepGraph&) = delete;
    StepGraph& operator=(const StepGraph&) = delete;

    void capture(const std::function<void()>& step);
    void launch();
    bool ready() const;
    // Number of kernel (and memcpy/memset) nodes in the captured graph.
    std::size_t node_count() const;

private:
    struct Impl;
    std::unique_ptr<Impl> m_impl;
};

// Elapsed time between two points on the compute stream, in milliseconds (CUDA events).
class StreamTimer {
public:
    StreamTimer();
    ~StreamTimer();
    StreamTimer(const StreamTimer&) = delete;
    StreamTimer& operator=(const StreamTimer&) = delete;
    void start();
    void stop();
    // Waits for the stop event.
    float elapsed_ms();

private:
    struct Impl;
    std::unique_ptr<Impl> m_impl;
};

}  // namespace cumnist::cuda
