// Internal to the CUDA backend (kernels/*.cu only): error macros that throw cumnist::Error, RAII
// owners for CUDA/cuBLAS/cuDNN resources, the process-wide Context (device, compute stream, cuBLAS
// handle and its workspace) and launch-geometry helpers. Not a public header: it includes CUDA.
// (The cuDNN handle is not part of Context: kernels/conv.cu creates it on first use of a
// convolution, so that runs without convolutions never load cuDNN's sub-libraries.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "cumnist/error.h"

namespace cumnist::cuda::detail {

// True for the errors after which the CUDA context is unusable (every later call fails too).
inline bool is_sticky(cudaError_t err) {
    switch (err) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
        return true;
    default:
        return false;
    }
}

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
    // Clear the runtime's "last error" so a later, unrelated launch check does not report this one
    // again (a no-op for sticky errors, which stay).
    (void)cudaGetLastError();
    throw Error(fmt::format("CUDA error {} ({}) in '{}' at {}:{}{}", cudaGetErrorName(err), cudaGetErrorString(err), expr,
                            file, line,
                            is_sticky(err) ? "; the CUDA context is no longer usable, so training cannot continue" : ""));
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line) {
    throw Error(fmt::format("cuBLAS error {} ({}) in '{}' at {}:{}", cublasGetStatusName(status),
                            cublasGetStatusString(status), expr, file, line));
}

[[noreturn]] inline void throw_cudnn_error(cudnnStatus_t status, const char* expr, const char* file, int line) {
    // A failed cuDNN kernel launch leaves the runtime's last error set: clear it, so a later,
    // unrelated launch check does not report it again (as throw_cuda_error does).
    (void)cudaGetLastError();
    // cuDNN 9 also keeps a message about the last error of this thread, which often names the
    // offending parameter; reported after the status.
    char detail[512] = {};
    cudnnGetLastErrorString(detail, sizeof detail);
    throw Error(fmt::format("cuDNN error {} ({}) in '{}' at {}:{}{}{}", cudnnGetErrorString(status),
                            static_cast<int>(status), expr, file, line, detail[0] != '\0' ? "; cuDNN says: " : "",
                            detail));
}

}  // namespace cumnist::cuda::detail

// CUDA_CHECK(cudaCall(...)): throws cumnist::Error naming the call, file:line and CUDA's message.
#define CUDA_CHECK(expr)                                                                          \
    do {                                                                                          \
        const cudaError_t cumnist_cuda_err_ = (expr);                                             \
        if (cumnist_cuda_err_ != cudaSuccess)                                                     \
            ::cumnist::cuda::detail::throw_cuda_error(cumnist_cuda_err_, #expr, __FILE__, __LINE__); \
    } while (0)

// CUBLAS_CHECK(cublasCall(...)): the same for cuBLAS status codes.
#define CUBLAS_CHECK(expr)                                                                             \
    do {                                                                                               \
        const cublasStatus_t cumnist_cublas_status_ = (expr);                                          \
        if (cumnist_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                           \
            ::cumnist::cuda::detail::throw_cublas_error(cumnist_cublas_status_, #expr, __FILE__, __LINE__); \
    } while (0)

// CUDNN_CHECK(cudnnCall(...)): the same for cuDNN status codes (cudnnGetErrorString's name).
#define CUDNN_CHECK(expr)                                                                            \
    do {                                                                                             \
        const cudnnStatus_t cumnist_cudnn_status_ = (expr);                                          \
        if (cumnist_cudnn_status_ != CUDNN_STATUS_SUCCESS)                                           \
            ::cumnist::cuda::detail::throw_cudnn_error(cumnist_cudnn_status_, #expr, __FILE__, __LINE__); \
    } while (0)

// After every kernel launch: a bad configuration or a missing kernel image is reported here, at
// the launch, naming the launching function. (Faults inside the kernel surface at the next sync.)
#define CUMNIST_CHECK_LAUNCH()                                                                       \
    do {                                                                                             \
        const cudaError_t cumnist_launch_err_ = cudaGetLastError();                                  \
        if (cumnist_launch_err_ != cudaSuccess)                                                      \
            ::cumnist::cuda::detail::throw_cuda_error(cumnist_launch_err_, __func__, __FILE__, __LINE__); \
    } while (0)

namespace cumnist::cuda {

// --- RAII owners. Move-only; destructors never throw (errors at release are ignored). ----------

template <class T, class Traits>
class Owned {
public:
    Owned() = default;
    explicit Owned(T handle) noexcept : m_handle(handle) {}
    ~Owned() { reset(); }
    Owned(Owned&& other) noexcept : m_handle(std::exchange(other.m_handle, T{})) {}
    Owned& operator=(Owned&& other) noexcept {
        if (this != &other) {
            reset();
            m_handle = std::exchange(other.m_handle, T{});
        }
        return *this;
    }
    Owned(const Owned&) = delete;
    Owned& operator=(const Owned&) = delete;

    T get() const noexcept { return m_handle; }
    explicit operator bool() const noexcept { return m_handle != T{}; }
    void reset(T handle = T{}) noexcept {
        if (m_handle != T{}) Traits::destroy(m_handle);
        m_handle = handle;
    }

private:
    T m_handle{};
};

namespace detail {
struct StreamTraits {
    static void destroy(cudaStream_t s) noexcept { (void)cudaStreamDestroy(s); }
};
struct EventTraits {
    static void destroy(cudaEvent_t e) noexcept { (void)cudaEventDestroy(e); }
};
struct GraphTraits {
    static void destroy(cudaGraph_t g) noexcept { (void)cudaGraphDestroy(g); }
};
struct GraphExecTraits {
    static void destroy(cudaGraphExec_t g) noexcept { (void)cudaGraphExecDestroy(g); }
};
struct CublasTraits {
    static void destroy(cublasHandle_t h) noexcept { (void)cublasDestroy(h); }
};
struct CudnnTraits {
    static void destroy(cudnnHandle_t h) noexcept { (void)cudnnDestroy(h); }
};
struct DeviceMemoryTraits {
    static void destroy(void* p) noexcept { (void)cudaFree(p); }
};
}  // namespace detail

using Stream = Owned<cudaStream_t, detail::StreamTraits>;
using Event = Owned<cudaEvent_t, detail::EventTraits>;
using Graph = Owned<cudaGraph_t, detail::GraphTraits>;
using GraphExec = Owned<cudaGraphExec_t, detail::GraphExecTraits>;
using CublasHandle = Owned<cublasHandle_t, detail::CublasTraits>;
using CudnnHandle = Owned<cudnnHandle_t, detail::CudnnTraits>;
using DeviceMemory = Owned<void*, detail::DeviceMemoryTraits>;

inline Event make_event(unsigned flags = cudaEventDefault) {
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, flags));
    return Event(e);
}

// --- The per-thread context. --------------------------------------------------------------------

// cumnist uses one GPU: device 0 (select another with CUDA_VISIBLE_DEVICES).
constexpr int kDeviceIndex = 0;

// Device 0, one non-blocking compute stream on which every op this host thread queues goes, and one
// cuBLAS handle bound to it with an explicit math mode and a workspace allocated here, so that graph
// capture and replay never allocate. Each host thread that queues GPU work has its own, created on
// its first use (Context::get()): runs on two threads (a sweep's concurrent trials) queue onto two
// streams that the GPU overlaps, and never share a handle, a math mode or a capture. Deliberately
// never destroyed, because the CUDA runtime may already be shutting down when thread-exit and static
// destructors run; a thread's context is a stream, a handle and a 4-32 MiB workspace, and cumnist
// starts a bounded number of such threads.
class Context {
public:
    // Creates the context on first call; throws cumnist::Error when no GPU is usable.
    static Context& get();
    // The context if it has been created, else nullptr. Never creates, never throws.
    static Context* existing() noexcept;

    cudaStream_t stream() const { return m_stream.get(); }
    cublasHandle_t cublas() const { return m_cublas.get(); }
    int device() const { return m_device; }
    int sm_count() const { return m_sm_count; }

    // CUBLAS_TF32_TENSOR_OP_MATH when enabled, else CUBLAS_DEFAULT_MATH (plain FP32), on this
    // thread's handle (cuda::MathModeScope); tf32() is the mode set last.
    void set_math_mode(bool tf32);
    bool tf32() const { return m_tf32; }

    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

private:
    Context();

    int m_device = kDeviceIndex;
    int m_sm_count = 1;
    bool m_tf32 = false;
    Stream m_stream;
    DeviceMemory m_workspace;
    CublasHandle m_cublas;
};

inline Context& context() { return Context::get(); }

// --- Launch geometry. ----------------------------------------------------------------------------

constexpr unsigned kBlockSize = 256;

// Blocks for a grid-stride loop over `items` elements with `block` threads each: enough to cover the
// work, capped at 32 blocks per SM (the loop does the rest), never 0. Call only when items > 0.
inline unsigned grid_for(std::size_t items, unsigned block = kBlockSize) {
    const std::size_t needed = (items + block - 1) / block;
    const std::size_t cap = static_cast<std::size_t>(context().sm_count()) * 32u;
    const std::size_t blocks = needed < cap ? needed : cap;
    return static_cast<unsigned>(blocks > 0 ? blocks : 1);
}

// A (x, y) grid for a (rows, cols) loop with columns over x (`block` threads per block) and rows
// over y, each grid-strided; at most 32 blocks per SM in all, never 0 in either dimension.
inline dim3 grid_for_rows(int rows, int cols, unsigned block = kBlockSize) {
    const std::size_t cap = static_cast<std::size_t>(context().sm_count()) * 32u;
    std::size_t x = (static_cast<std::size_t>(cols > 0 ? cols : 1) + block - 1) / block;
    if (x > cap) x = cap;
    std::size_t y = static_cast<std::size_t>(rows > 0 ? rows : 1);
    const std::size_t y_cap = cap / x > 0 ? cap / x : 1;
    if (y > y_cap) y = y_cap;
    if (y > 65535u) y = 65535u;
    return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), 1u);
}

// The calling thread's first element index and the grid's stride, as size_t (no 2^31 overflow).
__device__ __forceinline__ std::size_t grid_thread_index() {
    return static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ std::size_t grid_stride() { return static_cast<std::size_t>(gridDim.x) * blockDim.x; }

}  // namespace cumnist::cuda
