// Host-side control of the CUDA backend that is not a numeric op: device discovery, memory,
// the compute stream, CUDA Graph capture and the streaming path's copy stream. CUDA-free
// declarations. "The compute stream" is always the calling thread's: each host thread that queues
// GPU work has its own stream and cuBLAS handle. Implemented in kernels/cuda_context.cu, or by
// kernels/cuda_stubs.cpp (every call throws "built without CUDA support") in a build without CUDA.
#pragma once

#include <cstddef>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>

namespace cumnist::cuda {

// Empty when a GPU is usable; otherwise why not ("built without CUDA support", "no CUDA driver
// found: ...", "no CUDA device visible", ...). Never throws.
std::string unavailable_reason();

// True when the driver reports at least one CUDA device (usable by this build or not). Never throws.
bool device_present();

// "NVIDIA H100 80GB HBM3, compute capability 9.0, 79.1 GiB, cuDNN 9.19.0 (for CUDA 13.0)" for the
// current device and the cuDNN library loaded.
std::string device_description();

// cudaMalloc / cudaFree. Out of memory throws cumnist::Error naming the bytes requested and the
// free/total memory.
void* allocate(std::size_t bytes);
void release(void* ptr) noexcept;

// Free and total memory of the GPU (cudaMemGetInfo), in bytes.
struct MemoryInfo {
    std::size_t free_bytes = 0;
    std::size_t total_bytes = 0;
};
MemoryInfo memory_info();

// Page-locked host memory for async copies.
void* allocate_pinned(std::size_t bytes);
void release_pinned(void* ptr) noexcept;

// Copies on the compute stream, then waits for the stream: for use outside the training step.
void copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, std::size_t bytes);
void zero(void* ptr, std::size_t bytes);

// Waits until all work queued on the compute stream has finished; rethrows asynchronous errors.
void synchronize();

// cuBLAS's math mode for the GEMMs queued while the scope lives: TF32 tensor-core math when `tf32`,
// else plain FP32 (CUBLAS_DEFAULT_MATH, also the mode outside every scope). The previous mode comes
// back when the scope ends, so one trainer's --tf32 never reaches another trainer, an evaluation
// or a prediction. A captured step keeps the mode it was captured with. Scopes nest; the mode is
// the calling thread's (each host thread has its own stream and cuBLAS handle).
class MathModeScope {
public:
    explicit MathModeScope(bool tf32);
    ~MathModeScope();
    MathModeScope(const MathModeScope&) = delete;
    MathModeScope& operator=(const MathModeScope&) = delete;

private:
    bool m_previous = false;
    bool m_changed = false;
};
// The math mode GEMMs queued now would use (true: TF32).
bool tf32_enabled();

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

// The streaming data path's host-to-device copies: a second (copy) stream beside the compute
// stream, and per device ring slot two events that order the copies into a slot against the steps
// that read it, with no host wait on the compute stream:
//   copy stream:     wait consumed[k] → copy the staged batch into ring slot k → record ready[k]
//   compute stream:  wait ready[k] → the step reading ring slot k → record consumed[k]
// so the copy of the next batch runs while the current step computes. The host memory copied from
// must be page-locked (allocate_pinned) and must not be rewritten until wait_copied() returns.
// wait_copied() may be called from another thread (the loader's) while this one queues work.
class CopyStream {
public:
    struct Region {
        void* device;
        const void* host;
        std::size_t bytes;
    };

    explicit CopyStream(int slots);
    // Waits for the copies in flight (their pinned sources may be freed next); never throws.
    ~CopyStream();
    CopyStream(CopyStream&&) noexcept;
    CopyStream& operator=(CopyStream&&) noexcept;
    CopyStream(const CopyStream&) = delete;
    CopyStream& operator=(const CopyStream&) = delete;

    // Queues the copies into ring slot `slot` on the copy stream behind the last step that read the
    // slot (consumed[slot]; nothing before the first mark_consumed), then records ready[slot].
    void upload(int slot, std::initializer_list<Region> regions);
    // Makes the compute stream wait for ready[slot]: work queued on it afterwards sees the copies.
    void wait_ready(int slot);
    // Records consumed[slot] on the compute stream, behind the work queued so far.
    void mark_consumed(int slot);
    // Blocks the calling thread (without spinning) until the last upload() into `slot` has
    // finished reading host memory; returns at once when there was none.
    void wait_copied(int slot);
    int slots() const;

private:
    struct Impl;
    std::unique_ptr<Impl> m_impl;
};

// Testing: the calling thread's next StepGraph::capture() fails the way a capture-unsafe call
// inside the step makes it fail (it synchronises the capturing stream), so that the fallback to
// plain launches can be tested. Throws "built without CUDA support" in a build without CUDA.
void fail_next_capture_for_testing();

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
