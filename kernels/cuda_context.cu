// Host-side control of the CUDA backend (src/core/cuda_host.h): device discovery, the lazily created
// Context, device and pinned memory, synchronous copies, TF32, CUDA Graph capture, the streaming
// path's copy stream and event timers.
// No numeric op lives here.
#include <utility>
#include <cstring>
#include <vector>

#include "cuda_common.cuh"
#include "core/cuda_host.h"

namespace cumnist::cuda {

namespace {

// This host thread's context (Context::get).
thread_local Context* t_context = nullptr;

// cuBLAS's recommended workspace: 32 MiB on Hopper and newer, 4 MiB before.
std::size_t cublas_workspace_bytes(int cc_major) { return (cc_major >= 9 ? 32u : 4u) << 20; }

constexpr double kMiB = 1024.0 * 1024.0;
constexpr double kGiB = 1024.0 * kMiB;

// An empty kernel whose attributes are queried to find out whether this binary carries code
// (SASS or PTX) the device can run.
static __global__ void probe_kernel() {}

std::string compute_unavailable_reason() {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        if (err == cudaErrorNoDevice)
            return fmt::format("no CUDA device visible ({})", cudaGetErrorString(err));
        // cudaErrorInsufficientDriver (no driver, or one older than this CUDA runtime),
        // cudaErrorStubLibrary, cudaErrorSystemDriverMismatch, ...
        return fmt::format("no usable CUDA driver found: {} ({})", cudaGetErrorString(err), cudaGetErrorName(err));
    }
    if (count == 0) return "no CUDA device visible";

    err = cudaSetDevice(kDeviceIndex);
    if (err == cudaSuccess) {
        cudaFuncAttributes attributes{};
        err = cudaFuncGetAttributes(&attributes, probe_kernel);
    }
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        cudaDeviceProp prop{};
        const bool named = cudaGetDeviceProperties(&prop, kDeviceIndex) == cudaSuccess;
        (void)cudaGetLastError();
        const std::string device =
            named ? fmt::format("{} (compute capability {}.{})", prop.name, prop.major, prop.minor) : "CUDA device 0";
        if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction ||
            err == cudaErrorUnsupportedPtxVersion) {
            const std::string arch = named ? fmt::format("{}{}", prop.major, prop.minor) : std::string("native");
            return fmt::format("this build of cumnist has no GPU code for {}: {}; rebuild with "
                               "-DCMAKE_CUDA_ARCHITECTURES={}",
                               device, cudaGetErrorString(err), arch);
        }
        return fmt::format("{} cannot be used: {} ({})", device, cudaGetErrorString(err), cudaGetErrorName(err));
    }
    return {};
}

// The synchronous-copy direction for cudaMemcpyAsync.
cudaMemcpyKind copy_kind(bool dst_on_device, bool src_on_device) {
    if (dst_on_device) return src_on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice;
    return src_on_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost;
}

// Kernel, memcpy and memset nodes of a captured graph (the work it does per replay).
std::size_t count_work_nodes(cudaGraph_t graph) {
    std::size_t n = 0;
    CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &n));
    std::vector<cudaGraphNode_t> nodes(n);
    if (n > 0) CUDA_CHECK(cudaGraphGetNodes(graph, nodes.data(), &n));
    std::size_t work = 0;
    for (std::size_t i = 0; i < n; ++i) {
        cudaGraphNodeType type{};
        CUDA_CHECK(cudaGraphNodeGetType(nodes[i], &type));
        if (type == cudaGraphNodeTypeKernel || type == cudaGraphNodeTypeMemcpy || type == cudaGraphNodeTypeMemset)
            ++work;
    }
    return work;
}

}  // namespace

// --- Context -------------------------------------------------------------------------------------

Context::Context() {
    const std::string reason = unavailable_reason();
    if (!reason.empty()) throw Error(fmt::format("the CUDA backend cannot be used: {}", reason));

    CUDA_CHECK(cudaSetDevice(m_device));
    CUDA_CHECK(cudaDeviceGetAttribute(&m_sm_count, cudaDevAttrMultiProcessorCount, m_device));
    if (m_sm_count < 1) m_sm_count = 1;
    int cc_major = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, m_device));

    // Non-blocking: the compute stream never serialises with the legacy default stream.
    cudaStream_t stream = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    m_stream = Stream(stream);

    const std::size_t workspace_bytes = cublas_workspace_bytes(cc_major);
    void* workspace = nullptr;
    CUDA_CHECK(cudaMalloc(&workspace, workspace_bytes));
    m_workspace = DeviceMemory(workspace);

    cublasHandle_t handle = nullptr;
    CUBLAS_CHECK(cublasCreate(&handle));
    m_cublas = CublasHandle(handle);
    CUBLAS_CHECK(cublasSetStream(handle, stream));
    // After cublasSetStream, which resets the handle to cuBLAS's own workspace pool.
    CUBLAS_CHECK(cublasSetWorkspace(handle, workspace, workspace_bytes));
    CUBLAS_CHECK(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST));
    CUBLAS_CHECK(cublasSetAtomicsMode(handle, CUBLAS_ATOMICS_NOT_ALLOWED));
    set_math_mode(false);  // plain FP32 unless a MathModeScope says otherwise
}

void Context::set_math_mode(bool tf32) {
    CUBLAS_CHECK(cublasSetMathMode(m_cublas.get(), tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    m_tf32 = tf32;
}

Context& Context::get() {
    if (t_context == nullptr) t_context = new Context();  // if it throws, the next call tries again
    return *t_context;
}

Context* Context::existing() noexcept { return t_context; }

// --- cuda_host.h ---------------------------------------------------------------------------------

std::string unavailable_reason() {
    try {
        // Computed once: the driver and devices do not change during a run, and the probe is slow.
        static const std::string reason = compute_unavailable_reason();
        return reason;
    } catch (...) {
        return "the CUDA status could not be determined";
    }
}

bool device_present() {
    try {
        static const bool present = [] {
            int count = 0;
            const cudaError_t err = cudaGetDeviceCount(&count);
            if (err != cudaSuccess) (void)cudaGetLastError();
            return err == cudaSuccess && count > 0;
        }();
        return present;
    } catch (...) {
        return false;
    }
}

namespace {
// Makes device 0 current on the calling thread, or throws with the reason when no GPU is usable:
// for the calls that need a device but not this thread's stream (so a helper thread that frees or
// allocates creates no context of its own).
void use_device() {
    const std::string reason = unavailable_reason();
    if (!reason.empty()) throw Error(fmt::format("the CUDA backend cannot be used: {}", reason));
    CUDA_CHECK(cudaSetDevice(kDeviceIndex));
}
}  // namespace

std::string device_description() {
    const std::string reason = unavailable_reason();
    if (!reason.empty()) throw Error(reason);
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, kDeviceIndex));
    // cuDNN as loaded at run time (it may differ from the headers cumnist was built with, which
    // conv.cu checks when it first creates its handle) and the CUDA runtime it was built for.
    const std::size_t cudnn = cudnnGetVersion(), cudnn_cudart = cudnnGetCudartVersion();
    return fmt::format("{}, compute capability {}.{}, {:.1f} GiB, cuDNN {}.{}.{} (for CUDA {}.{})", prop.name,
                       prop.major, prop.minor, static_cast<double>(prop.totalGlobalMem) / kGiB, cudnn / 10000,
                       cudnn / 100 % 100, cudnn % 100, cudnn_cudart / 1000, cudnn_cudart / 10 % 100);
}

void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    use_device();
    void* ptr = nullptr;
    const cudaError_t err = cudaMalloc(&ptr, bytes);
    if (err == cudaSuccess) return ptr;
    (void)cudaGetLastError();
    std::size_t free_bytes = 0, total_bytes = 0;
    const bool have_info = cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess;
    (void)cudaGetLastError();
    const std::string memory_info =
        have_info ? fmt::format("{:.1f} MiB free of {:.1f} MiB", static_cast<double>(free_bytes) / kMiB,
                                static_cast<double>(total_bytes) / kMiB)
                  : std::string("free memory unknown");
    if (err == cudaErrorMemoryAllocation) {
        throw Error(fmt::format("out of GPU memory: cannot allocate {} bytes ({:.1f} MiB) on device {} ({}); "
                                "try a smaller batch size (--batch-size) or model (--hidden)",
                                bytes, static_cast<double>(bytes) / kMiB, kDeviceIndex, memory_info));
    }
    throw Error(fmt::format("cudaMalloc of {} bytes failed: {} ({}); {}", bytes, cudaGetErrorString(err),
                            cudaGetErrorName(err), memory_info));
}

void release(void* ptr) noexcept {
    if (ptr == nullptr) return;
    (void)cudaFree(ptr);
    (void)cudaGetLastError();
}

MemoryInfo memory_info() {
    use_device();
    MemoryInfo info;
    CUDA_CHECK(cudaMemGetInfo(&info.free_bytes, &info.total_bytes));
    return info;
}

void* allocate_pinned(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    use_device();
    void* ptr = nullptr;
    const cudaError_t err = cudaMallocHost(&ptr, bytes);
    if (err == cudaSuccess) return ptr;
    (void)cudaGetLastError();
    throw Error(fmt::format("cannot allocate {} bytes ({:.1f} MiB) of page-locked host memory: {} ({})", bytes,
                            static_cast<double>(bytes) / kMiB, cudaGetErrorString(err), cudaGetErrorName(err)));
}

void release_pinned(void* ptr) noexcept {
    if (ptr == nullptr) return;
    (void)cudaFreeHost(ptr);
    (void)cudaGetLastError();
}

void copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, std::size_t bytes) {
    if (bytes == 0) return;
    if (!dst_on_device && !src_on_device) {
        std::memcpy(dst, src, bytes);
        return;
    }
    const cudaStream_t stream = Context::get().stream();
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, copy_kind(dst_on_device, src_on_device), stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
}

void zero(void* ptr, std::size_t bytes) {
    if (bytes == 0) return;
    const cudaStream_t stream = Context::get().stream();
    CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
}

void synchronize() {
    // Nothing can have been queued before the context exists.
    Context* ctx = Context::existing();
    if (ctx == nullptr) return;
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream()));
    CUDA_CHECK(cudaGetLastError());
}

MathModeScope::MathModeScope(bool tf32) {
    Context& ctx = Context::get();
    m_previous = ctx.tf32();
    if (tf32 != m_previous) {
        ctx.set_math_mode(tf32);
        m_changed = true;
    }
}

MathModeScope::~MathModeScope() {
    if (!m_changed) return;
    try {
        Context::get().set_math_mode(m_previous);
    } catch (...) {
        // A failing cublasSetMathMode means a broken context, which the next call reports.
    }
}

bool tf32_enabled() {
    const Context* ctx = Context::existing();
    return ctx != nullptr && ctx->tf32();
}

// --- StepGraph -----------------------------------------------------------------------------------

struct StepGraph::Impl {
    GraphExec exec;
    std::size_t nodes = 0;
};

StepGraph::StepGraph() : m_impl(std::make_unique<Impl>()) {}
StepGraph::~StepGraph() = default;
StepGraph::StepGraph(StepGraph&&) noexcept = default;
StepGraph& StepGraph::operator=(StepGraph&&) noexcept = default;

namespace {
thread_local bool t_fail_next_capture = false;
}  // namespace

void fail_next_capture_for_testing() { t_fail_next_capture = true; }

void StepGraph::capture(const std::function<void()>& step) {
    const cudaStream_t stream = Context::get().stream();
    // Thread-local mode: only this thread's capture-unsafe calls (cudaMalloc, synchronisation)
    // invalidate the capture; the loader thread's pinned allocations do not.
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
        if (std::exchange(t_fail_next_capture, false)) CUDA_CHECK(cudaStreamSynchronize(stream));  // refused
        step();
    } catch (...) {
        // Always leave capture mode, or the stream stays unusable; then report the original error.
        cudaGraph_t partial = nullptr;
        (void)cudaStreamEndCapture(stream, &partial);
        if (partial != nullptr) (void)cudaGraphDestroy(partial);
        (void)cudaGetLastError();
        throw;
    }
    cudaGraph_t raw = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream, &raw);
    Graph graph(raw);
    if (end == cudaErrorStreamCaptureInvalidated || end == cudaErrorStreamCaptureUnsupported) {
        (void)cudaGetLastError();
        throw Error(fmt::format("CUDA Graph capture of the training step failed: {} ({}); a call inside the step "
                                "allocated, synchronised or copied from pageable memory",
                                cudaGetErrorString(end), cudaGetErrorName(end)));
    }
    CUDA_CHECK(end);
    const std::size_t nodes = count_work_nodes(graph.get());

    cudaGraphExec_t raw_exec = nullptr;
    CUDA_CHECK(cudaGraphInstantiate(&raw_exec, graph.get(), 0));
    GraphExec exec(raw_exec);
    // Uploads the graph's work descriptors now, so the first launch is not slower than the rest.
    CUDA_CHECK(cudaGraphUpload(exec.get(), stream));

    if (!m_impl) m_impl = std::make_unique<Impl>();
    m_impl->exec = std::move(exec);
    m_impl->nodes = nodes;
}

void StepGraph::launch() {
    CUMNIST_CHECK(ready(), "StepGraph::launch() called before a successful capture()");
    CUDA_CHECK(cudaGraphLaunch(m_impl->exec.get(), Context::get().stream()));
}

bool StepGraph::ready() const { return m_impl != nullptr && static_cast<bool>(m_impl->exec); }

std::size_t StepGraph::node_count() const { return m_impl ? m_impl->nodes : 0; }

// --- CopyStream ----------------------------------------------------------------------------------

struct CopyStream::Impl {
    Stream stream;
    std::vector<Event> ready;     // recorded on the copy stream after the copies into a slot
    std::vector<Event> consumed;  // recorded on the compute stream after the step reading a slot
};

CopyStream::CopyStream(int slots) : m_impl(std::make_unique<Impl>()) {
    CUMNIST_CHECK(slots >= 1, "CopyStream: {} slots", slots);
    Context::get();
    // Non-blocking, like the compute stream: no implicit ordering with the legacy default stream.
    cudaStream_t stream = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    m_impl->stream = Stream(stream);
    for (int k = 0; k < slots; ++k) {
        // The loader thread waits for ready[k] on the host: blocking sync puts it to sleep instead
        // of spinning on a core for as long as the compute stream runs ahead of the copies.
        m_impl->ready.push_back(make_event(cudaEventDisableTiming | cudaEventBlockingSync));
        // consumed[k] is only waited for by the copy stream, on the device.
        m_impl->consumed.push_back(make_event(cudaEventDisableTiming));
    }
}

CopyStream::~CopyStream() {
    if (m_impl && m_impl->stream) {
        (void)cudaStreamSynchronize(m_impl->stream.get());
        (void)cudaGetLastError();
    }
}

CopyStream::CopyStream(CopyStream&&) noexcept = default;
CopyStream& CopyStream::operator=(CopyStream&&) noexcept = default;

namespace {
void check_slot(const char* what, int slot, int slots) {
    CUMNIST_CHECK(slot >= 0 && slot < slots, "CopyStream::{}: slot {} of {}", what, slot, slots);
}
}  // namespace

void CopyStream::upload(int slot, std::initializer_list<Region> regions) {
    check_slot("upload", slot, slots());
    const cudaStream_t stream = m_impl->stream.get();
    // Before the first mark_consumed(slot) the event holds no work and the wait is a no-op; later
    // it is the step that last read this ring slot, which the copy must not overwrite early.
    CUDA_CHECK(cudaStreamWaitEvent(stream, m_impl->consumed[static_cast<std::size_t>(slot)].get(), 0));
    for (const Region& r : regions)
        if (r.bytes > 0) CUDA_CHECK(cudaMemcpyAsync(r.device, r.host, r.bytes, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(m_impl->ready[static_cast<std::size_t>(slot)].get(), stream));
}

void CopyStream::wait_ready(int slot) {
    check_slot("wait_ready", slot, slots());
    CUDA_CHECK(cudaStreamWaitEvent(Context::get().stream(), m_impl->ready[static_cast<std::size_t>(slot)].get(), 0));
}

void CopyStream::mark_consumed(int slot) {
    check_slot("mark_consumed", slot, slots());
    CUDA_CHECK(cudaEventRecord(m_impl->consumed[static_cast<std::size_t>(slot)].get(), Context::get().stream()));
}

void CopyStream::wait_copied(int slot) {
    check_slot("wait_copied", slot, slots());
    // Returns at once for an event never recorded (an empty set of work).
    CUDA_CHECK(cudaEventSynchronize(m_impl->ready[static_cast<std::size_t>(slot)].get()));
}

int CopyStream::slots() const { return m_impl ? static_cast<int>(m_impl->ready.size()) : 0; }

// --- StreamTimer ---------------------------------------------------------------------------------

struct StreamTimer::Impl {
    Event start;
    Event stop;
    bool started = false;
    bool stopped = false;
};

// Events are created on first start(), so a timer can exist in a run that never uses the GPU.
StreamTimer::StreamTimer() : m_impl(std::make_unique<Impl>()) {}
StreamTimer::~StreamTimer() = default;

void StreamTimer::start() {
    const cudaStream_t stream = Context::get().stream();
    if (!m_impl->start) m_impl->start = make_event();
    if (!m_impl->stop) m_impl->stop = make_event();
    CUDA_CHECK(cudaEventRecord(m_impl->start.get(), stream));
    m_impl->started = true;
    m_impl->stopped = false;
}

void StreamTimer::stop() {
    CUMNIST_CHECK(m_impl->started, "StreamTimer::stop() called before start()");
    CUDA_CHECK(cudaEventRecord(m_impl->stop.get(), Context::get().stream()));
    m_impl->stopped = true;
}

float StreamTimer::elapsed_ms() {
    CUMNIST_CHECK(m_impl->stopped, "StreamTimer::elapsed_ms() called before stop()");
    CUDA_CHECK(cudaEventSynchronize(m_impl->stop.get()));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, m_impl->start.get(), m_impl->stop.get()));
    return ms;
}

}  // namespace cumnist::cuda
