// The CUDA backend of a build without CUDA: compiled instead of kernels/*.cu. Every op and every
// GPU control call throws "built without CUDA support"; unavailable_reason() says so, and the
// release functions, constructors and destructors do nothing, so CPU-only runs are unaffected.
#include "backend.h"
#include "core/cuda_host.h"
#include "cumnist/error.h"

namespace cumnist::cuda {

namespace {
constexpr const char* kNoCuda = "built without CUDA support";
[[noreturn]] void no_cuda() { throw Error(kNoCuda); }
}  // namespace

void fail_next_capture_for_testing() { no_cuda(); }

// --- Ops (backend_ops.inc) -----------------------------------------------------------------------

void gemm(float*, const float*, const float*, int, int, int, Trans, Trans, float, float) { no_cuda(); }

void bias_act_dropout_forward(float*, float*, const float*, int, int, Activation, float, uint32_t, uint64_t, uint32_t,
                              bool, const uint64_t*) {
    no_cuda();
}

void act_dropout_backward(float*, const float*, const float*, int, int, Activation, float, uint32_t, uint64_t, uint32_t,
                          bool, const uint64_t*, float*) {
    no_cuda();
}

void act_dropout_backward_through(float*, const float*, const float*, int, const float*, int, int, Activation, float,
                                  uint32_t, uint64_t, uint32_t, bool, const uint64_t*, float*) {
    no_cuda();
}

void act_dropout_forward(float*, const float*, int, int, Activation, float, uint32_t, uint64_t, uint32_t, bool,
                         const uint64_t*) {
    no_cuda();
}

void bias_grad(float*, const float*, int, int) { no_cuda(); }

std::size_t conv2d_workspace_bytes(const Conv2dGeometry&) { no_cuda(); }

void conv2d_backward(float*, float*, float*, const float*, const float*, const float*, const Conv2dGeometry&, void*,
                     std::size_t) {
    no_cuda();
}
void conv2d_forward(float*, const float*, const float*, const float*, const Conv2dGeometry&, void*, std::size_t,
                    Activation) {
    no_cuda();
}

void conv2d_backward_data(float*, const float*, const float*, const Conv2dGeometry&, void*, std::size_t) { no_cuda(); }

void conv2d_backward_filter(float*, const float*, const float*, const Conv2dGeometry&, void*, std::size_t) {
    no_cuda();
}

void channel_bias_grad(float*, const float*, int, int, int) { no_cuda(); }

void maxpool2d_forward(float*, int32_t*, const float*, const Pool2dGeometry&) { no_cuda(); }

void maxpool2d_backward(float*, const float*, const int32_t*, const float*, const Pool2dGeometry&) { no_cuda(); }

void softmax_xent(float*, float*, float*, const float*, const uint8_t*, int, int, float, double*) { no_cuda(); }

void bias_softmax_xent(float*, float*, float*, float*, float*, const float*, const uint8_t*, int, int, float, double*) {
    no_cuda();
}

void softmax(float*, const float*, int, int) { no_cuda(); }

void accumulate_metrics(double*, const float*, const float*, int) { no_cuda(); }

void gather_batch(float*, uint8_t*, const uint8_t*, const uint8_t*, const int32_t*, const uint64_t*, int, int, int) {
    no_cuda();
}

void u8_to_float(float*, const uint8_t*, std::size_t) { no_cuda(); }

void increment(uint64_t*) { no_cuda(); }

void adam_step(float*, float*, float*, const float*, std::size_t, float, const float*, float, float, float,
               const uint64_t*, uint64_t*) {
    no_cuda();
}

void sgd_step(float*, float*, const float*, std::size_t, float, const float*, float, uint64_t*) { no_cuda(); }

void rmsprop_step(float*, float*, const float*, std::size_t, float, const float*, float, float, uint64_t*) { no_cuda(); }

void fill_zero(float*, std::size_t) { no_cuda(); }

// --- Host control (cuda_host.h) ------------------------------------------------------------------

std::string unavailable_reason() { return kNoCuda; }
bool device_present() { return false; }
std::string device_description() { no_cuda(); }
void* allocate(std::size_t) { no_cuda(); }
void release(void*) noexcept {}
MemoryInfo memory_info() { no_cuda(); }
void* allocate_pinned(std::size_t) { no_cuda(); }
void release_pinned(void*) noexcept {}
void copy(void*, bool, const void*, bool, std::size_t) { no_cuda(); }
void zero(void*, std::size_t) { no_cuda(); }
void synchronize() { no_cuda(); }
MathModeScope::MathModeScope(bool) { no_cuda(); }
MathModeScope::~MathModeScope() = default;
bool tf32_enabled() { return false; }

// A StepGraph or StreamTimer may exist in a CPU-only run; using one throws. ready() and
// node_count() describe the (never captured) graph: false and 0.
struct StepGraph::Impl {};
StepGraph::StepGraph() = default;
StepGraph::~StepGraph() = default;
StepGraph::StepGraph(StepGraph&&) noexcept = default;
StepGraph& StepGraph::operator=(StepGraph&&) noexcept = default;
void StepGraph::capture(const std::function<void()>&) { no_cuda(); }
void StepGraph::launch() { no_cuda(); }
bool StepGraph::ready() const { return false; }
std::size_t StepGraph::node_count() const { return 0; }

// A CopyStream cannot be made without CUDA: its constructor throws.
struct CopyStream::Impl {};
CopyStream::CopyStream(int) { no_cuda(); }
CopyStream::~CopyStream() = default;
CopyStream::CopyStream(CopyStream&&) noexcept = default;
CopyStream& CopyStream::operator=(CopyStream&&) noexcept = default;
void CopyStream::upload(int, std::initializer_list<Region>) { no_cuda(); }
void CopyStream::wait_ready(int) { no_cuda(); }
void CopyStream::mark_consumed(int) { no_cuda(); }
void CopyStream::wait_copied(int) { no_cuda(); }
int CopyStream::slots() const { return 0; }

struct StreamTimer::Impl {};
StreamTimer::StreamTimer() = default;
StreamTimer::~StreamTimer() = default;
void StreamTimer::start() { no_cuda(); }
void StreamTimer::stop() { no_cuda(); }
float StreamTimer::elapsed_ms() { no_cuda(); }

}  // namespace cumnist::cuda
