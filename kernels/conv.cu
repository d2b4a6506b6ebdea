// 2-D convolutions (NCHW float, cross-correlation) on cuDNN, and the per-channel bias gradient.
//
// API. cuDNN 9 is split into a graph library (libcudnn_graph, the declarative API it recommends)
// and the legacy imperative libraries (libcudnn_ops, libcudnn_cnn, libcudnn_adv), which its
// documentation says "can still be directly used" (Backend API Overview, cuDNN 9). The legacy
// cudnnConvolutionForward / cudnnConvolutionBackwardData / cudnnConvolutionBackwardFilter with
// tensor, filter and convolution descriptors are shipped in libcudnn_cnn and marked deprecated
// (cudnn_cnn_v9.h; the attribute only warns when CUDNN_WARN_DEPRECATED is defined), not removed.
// They are used here because a fixed algorithm per direction is all cumnist needs, and they take
// a tenth of the code of building operation graphs, engine configs and execution plans by hand.
//
// Algorithms, fixed (no heuristics, no autotuning, nothing chosen at run time):
//   forward          CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM
//   backward data    CUDNN_CONVOLUTION_BWD_DATA_ALGO_1
//   backward filter  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1
// cuDNN's reproducibility notes ("Odds and Ends: Reproducibility (Determinism)") list as the
// convolutions that are NOT bitwise reproducible on one architecture exactly
// BWD_FILTER_ALGO_0, BWD_FILTER_ALGO_3 and BWD_DATA_ALGO_0 (they use atomics); the forward pass is
// not listed. So the three chosen here give the same bits on every run on one GPU model, which the
// graph-vs-plain and resume tests require.
//
// Math type: CUDNN_FMA_MATH, i.e. plain FP32 FMA kernels. (CUDNN_DEFAULT_MATH is NOT plain FP32:
// for float data on Ampere and newer it permits TF32 tensor-core kernels, which round the inputs
// to 10 mantissa bits; CUDNN_FMA_MATH restricts cuDNN to kernels that use FMA instructions.)
//
// Padding. cuDNN's convolution descriptor has one (symmetric) padding per dimension. It is given
// (pad_top, pad_left): the input position of output (oy, ox) is then oy·stride_h − pad_top + ky,
// exactly ops.h's formula, and pad_bottom/pad_right, which only decide out_h/out_w, matter only
// through the output size cuDNN derives. Where cuDNN's output size, (in_h + 2·pad_top − k_h) /
// stride_h + 1, equals g.out_h() (and likewise for the width) the three directions are therefore
// exactly the ops.h ones, symmetric padding or not (every output element, and so every gradient, is
// the same linear map). Otherwise (asymmetric padding that changes the output size, as Keras "same"
// with an even kernel or with stride > 1 often does) cuDNN could not write y, nor read dy, in
// place: conv2d_workspace_bytes() throws cumnist::Error before training starts rather than compute
// something else.
//
// Handle and descriptors. One cuDNN handle for the process, created on the first call of
// conv2d_workspace_bytes() (which the caller makes before the first step: cudnnCreate allocates
// and synchronises), bound once with cudnnSetStream to the Context's compute stream (which is never
// destroyed, so the binding stays valid), and destroyed never (see Cudnn::get). cudnnGetVersion() is checked against CUDNN_VERSION when the handle is
// created.
// A descriptor set (x, y, w, convolution) and its three workspace sizes are cached per full
// geometry (Conv2dGeometry::operator==); the batch size differs between the full batches and the
// short last batch of an epoch, so a second set appears for the latter. Creating one is host-side
// work: descriptors are host structures, and cudnnGetConvolution*WorkspaceSize computes a size
// from them; none of these calls takes a stream, a device pointer or the workspace, so (as far as
// cuDNN documents) they neither allocate device memory, launch, nor synchronise, and may run
// inside a CUDA Graph capture. conv2d_workspace_bytes() sizes the workspace for every batch size up
// to the largest, so no later plan can need more than the caller allocated.
//
// Graph capture. cudnnConvolution* enqueue their kernels on the handle's stream, the compute stream,
// and use only the caller's workspace, so they are captured like any kernel launch. As with cuBLAS,
// each direction must have run once for each geometry before a capture (the trainer's warm-up
// step): cuDNN loads its kernels and sets up its engines lazily on first use.
#include <algorithm>
#include <climits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "cuda_common.cuh"

namespace cumnist::cuda {

namespace {

constexpr cudnnConvolutionFwdAlgo_t kForwardAlgo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
constexpr cudnnConvolutionBwdDataAlgo_t kBackwardDataAlgo = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
constexpr cudnnConvolutionBwdFilterAlgo_t kBackwardFilterAlgo = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;

// --- RAII owners of cuDNN descriptors (host objects). ---------------------------------------------

struct TensorDescriptorTraits {
    static void destroy(cudnnTensorDescriptor_t d) noexcept { (void)cudnnDestroyTensorDescriptor(d); }
};
struct FilterDescriptorTraits {
    static void destroy(cudnnFilterDescriptor_t d) noexcept { (void)cudnnDestroyFilterDescriptor(d); }
};
struct ConvolutionDescriptorTraits {
    static void destroy(cudnnConvolutionDescriptor_t d) noexcept { (void)cudnnDestroyConvolutionDescriptor(d); }
};
using TensorDescriptor = Owned<cudnnTensorDescriptor_t, TensorDescriptorTraits>;
using FilterDescriptor = Owned<cudnnFilterDescriptor_t, FilterDescriptorTraits>;
using ConvolutionDescriptor = Owned<cudnnConvolutionDescriptor_t, ConvolutionDescriptorTraits>;

// A packed NCHW float tensor (n, c, h, w).
TensorDescriptor make_tensor(int n, int c, int h, int w) {
    cudnnTensorDescriptor_t raw = nullptr;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&raw));
    TensorDescriptor desc(raw);
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(raw, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, h, w));
    return desc;
}

std::string describe(const Conv2dGeometry& g) {
    return fmt::format("input ({}, {}, {}, {}), {} filters {}x{}, stride {}x{}, padding top {} left {} bottom {} "
                       "right {}",
                       g.n, g.in_c, g.in_h, g.in_w, g.out_c, g.k_h, g.k_w, g.stride_h, g.stride_w, g.pad_top,
                       g.pad_left, g.pad_bottom, g.pad_right);
}

// Everything cuDNN needs for one geometry: descriptors and the workspace of each direction.
struct ConvPlan {
    Conv2dGeometry g;
    TensorDescriptor x;  // (n, in_c, in_h, in_w): x and dx
    TensorDescriptor y;  // (n, out_c, out_h, out_w): y and dy
    FilterDescriptor w;  // (out_c, in_c, k_h, k_w): w and dw
    ConvolutionDescriptor conv;
    std::size_t forward_bytes = 0;
    std::size_t backward_data_bytes = 0;
    std::size_t backward_filter_bytes = 0;

    std::size_t max_bytes() const { return std::max({forward_bytes, backward_data_bytes, backward_filter_bytes}); }
};

std::unique_ptr<ConvPlan> build_plan(cudnnHandle_t handle, const Conv2dGeometry& g) {
    const int out_h = g.out_h(), out_w = g.out_w();
    if (g.n < 1 || g.in_c < 1 || g.in_h < 1 || g.in_w < 1 || g.out_c < 1 || g.k_h < 1 || g.k_w < 1 ||
        g.stride_h < 1 || g.stride_w < 1 || g.pad_top < 0 || g.pad_left < 0 || g.pad_bottom < 0 ||
        g.pad_right < 0 || out_h < 1 || out_w < 1)
        throw Error(fmt::format("conv2d on the GPU: invalid geometry: {}", describe(g)));

    auto plan = std::make_unique<ConvPlan>();
    plan->g = g;
    plan->x = make_tensor(g.n, g.in_c, g.in_h, g.in_w);
    plan->y = make_tensor(g.n, g.out_c, out_h, out_w);

    cudnnFilterDescriptor_t raw_w = nullptr;
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&raw_w));
    plan->w = FilterDescriptor(raw_w);
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(raw_w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, g.out_c, g.in_c, g.k_h, g.k_w));

    cudnnConvolutionDescriptor_t raw_conv = nullptr;
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&raw_conv));
    plan->conv = ConvolutionDescriptor(raw_conv);
    // Symmetric padding (pad_top, pad_left), dilation 1, cross-correlation, FP32 accumulation.
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(raw_conv, g.pad_top, g.pad_left, g.stride_h, g.stride_w, 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionMathType(raw_conv, CUDNN_FMA_MATH));

    // The output size cuDNN derives from the symmetric padding must be ops.h's (see the top).
    int cn = 0, cc = 0, ch = 0, cw = 0;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(raw_conv, plan->x.get(), raw_w, &cn, &cc, &ch, &cw));
    if (cn != g.n || cc != g.out_c || ch != out_h || cw != out_w) {
        if (g.pad_bottom != g.pad_top || g.pad_right != g.pad_left)
            throw Error(fmt::format(
                "conv2d: this asymmetric padding is not supported on the GPU: cuDNN pads symmetrically, and with "
                "padding (top {}, left {}) on both sides its output would be {}x{} instead of {}x{} ({}); use "
                "symmetric padding, an odd kernel with stride 1, or the CPU",
                g.pad_top, g.pad_left, ch, cw, out_h, out_w, describe(g)));
        throw Error(fmt::format("conv2d: cuDNN's output shape ({}, {}, {}, {}) differs from ({}, {}, {}, {}) for {}",
                                cn, cc, ch, cw, g.n, g.out_c, out_h, out_w, describe(g)));
    }

    // Fails with CUDNN_STATUS_NOT_SUPPORTED if an algorithm cannot run this geometry: reported here,
    // before training, naming the call.
    CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(handle, plan->x.get(), raw_w, raw_conv, plan->y.get(),
                                                        kForwardAlgo, &plan->forward_bytes));
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(handle, raw_w, plan->y.get(), raw_conv, plan->x.get(),
                                                             kBackwardDataAlgo, &plan->backward_data_bytes));
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(handle, plan->x.get(), plan->y.get(), raw_conv, raw_w,
                                                               kBackwardFilterAlgo, &plan->backward_filter_bytes));
    return plan;
}

// A host thread's cuDNN state: the handle, bound to the thread's compute stream, and the plan cache.
// Every use of the handle holds the mutex (cuDNN handles must not be used by two threads at once);
// a std::mutex makes no CUDA call, so this is harmless inside a graph capture.
class Cudnn {
public:
    // Created on a thread's first call (if the constructor throws, the next call tries again).
    // Never destroyed: cuDNN 9 loads its engine libraries lazily, after this object exists, so their
    // exit-time teardown would run before a static destructor of ours and cudnnDestroy would call
    // into torn-down state (PyTorch leaks its cuDNN handles at exit for the same reason). The
    // process's exit frees the host memory and the driver the device memory.
    static Cudnn& get() {
        thread_local Cudnn* instance = nullptr;
        if (instance == nullptr) instance = new Cudnn;
        return *instance;
    }

    std::mutex& mutex() { return m_mutex; }
    cudnnHandle_t handle() const { return m_handle.get(); }

    // The cached plan of geometry g, built on first use. Call with mutex() held. The reference
    // stays valid for the life of the process (plans are held by unique_ptr and never removed).
    const ConvPlan& plan(const Conv2dGeometry& g) {
        for (const auto& p : m_plans)
            if (p->g == g) return *p;
        m_plans.push_back(build_plan(m_handle.get(), g));
        return *m_plans.back();
    }

    Cudnn(const Cudnn&) = delete;
    Cudnn& operator=(const Cudnn&) = delete;

private:
    Cudnn() {
        const cudaStream_t stream = context().stream();  // selects the device; throws without a usable GPU
        // cuDNN 9 keeps its ABI within a major version for libraries at least as new as the
        // headers, patch levels compatible both ways: require the same major version and a
        // run-time minor version no older than the headers'.
        const std::size_t runtime = cudnnGetVersion();
        const std::size_t compiled = CUDNN_VERSION;
        if (runtime / 10000 != compiled / 10000 || runtime / 100 < compiled / 100)
            throw Error(fmt::format("cuDNN version mismatch: cumnist was built against cuDNN {}.{}.{} but the cuDNN "
                                    "library loaded at run time is {}.{}.{}; install cuDNN {}.{} or newer {}.x (or "
                                    "put it first on the library path)",
                                    compiled / 10000, compiled / 100 % 100, compiled % 100, runtime / 10000,
                                    runtime / 100 % 100, runtime % 100, compiled / 10000, compiled / 100 % 100,
                                    compiled / 10000));
        cudnnHandle_t raw = nullptr;
        CUDNN_CHECK(cudnnCreate(&raw));
        m_handle = CudnnHandle(raw);
        // Once: the compute stream never changes. (Not before every call: cudnnSetStream may reset
        // state of the handle's internal cuBLAS handle, and nothing here needs another stream.)
        CUDNN_CHECK(cudnnSetStream(raw, stream));
    }

    CudnnHandle m_handle;
    std::vector<std::unique_ptr<ConvPlan>> m_plans;
    std::mutex m_mutex;
};

void require_workspace(std::size_t needed, std::size_t available, const char* direction, const Conv2dGeometry& g) {
    if (needed > available)
        throw Error(fmt::format("conv2d {} on the GPU needs {} bytes of workspace but was given {} ({}); size it with "
                                "conv2d_workspace_bytes() for the largest batch",
                                direction, needed, available, describe(g)));
}

// y (planes · spatial) += bias[plane mod channels], planes = n · channels: planes over grid y,
// positions within the plane over grid x (no division per element).
static __global__ void add_channel_bias_kernel(float* __restrict__ y, const float* __restrict__ bias,
                                               std::size_t planes, int channels, int spatial) {
    for (std::size_t p = blockIdx.y; p < planes; p += gridDim.y) {
        const float b = bias[p % static_cast<std::size_t>(channels)];
        float* yp = y + p * static_cast<std::size_t>(spatial);
        for (int s = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); s < spatial;
             s += static_cast<int>(gridDim.x * blockDim.x))
            yp[s] += b;
    }
}

constexpr unsigned kChannelBlock = 256;  // a power of two (tree reduction below)

// db[c] = Σ_{r < n, s < spatial} dy[(r · channels + c) · spatial + s]. One block per channel
// (grid-strided over channels; the loop condition is uniform per block, so the barriers are too).
// Thread t sums elements j = t, t + 256, t + 512, ... of the channel's n · spatial elements,
// j = r · spatial + s, in ascending order; then a fixed pairwise tree combines the 256 partial sums.
// The order depends only on (n, channels, spatial), never on timing: deterministic, no atomics.
static __global__ void channel_bias_grad_kernel(float* __restrict__ db, const float* __restrict__ dy, int n,
                                                int channels, int spatial) {
    __shared__ float partial[kChannelBlock];
    const unsigned t = threadIdx.x;
    // (r, s) advance by 256 elements per step: step_r whole planes and step_s positions, carrying.
    const int step_r = static_cast<int>(kChannelBlock) / spatial;
    const int step_s = static_cast<int>(kChannelBlock) % spatial;
    for (int c = static_cast<int>(blockIdx.x); c < channels; c += static_cast<int>(gridDim.x)) {
        float sum = 0.0f;
        int r = static_cast<int>(t) / spatial, s = static_cast<int>(t) % spatial;
        while (r < n) {
            sum += dy[(static_cast<std::size_t>(r) * static_cast<std::size_t>(channels) + static_cast<std::size_t>(c)) *
                          static_cast<std::size_t>(spatial) +
                      static_cast<std::size_t>(s)];
            r += step_r;
            s += step_s;
            if (s >= spatial) {
                s -= spatial;
                ++r;
            }
        }
        partial[t] = sum;
        __syncthreads();
        for (unsigned stride = kChannelBlock / 2; stride > 0; stride /= 2) {
            if (t < stride) partial[t] += partial[t + stride];
            __syncthreads();
        }
        if (t == 0) db[c] = partial[0];
        __syncthreads();  // partial[] is reused for the next channel
    }
}

}  // namespace

std::size_t conv2d_workspace_bytes(const Conv2dGeometry& g) {
    if (g.n <= 0) return 0;  // no images: nothing runs
    Cudnn& cudnn = Cudnn::get();
    std::lock_guard<std::mutex> lock(cudnn.mutex());
    // ops.h: enough for every batch of up to g.n images (the short last batch of an epoch, the
    // evaluation batches). cuDNN sizes the workspace per exact shape and documents no rule that a
    // smaller batch needs less, so every batch size is asked (host-only queries, microseconds each);
    // only g.n's plan is kept, the others are built when their batch first runs.
    std::size_t bytes = cudnn.plan(g).max_bytes();
    for (int n = 1; n < g.n; ++n) bytes = std::max(bytes, build_plan(cudnn.handle(), g.with_batch(n))->max_bytes());
    return bytes;
}

namespace {
// y[r, c, s] += bias[c] over the n·out_c planes of the output.
void add_channel_bias(float* y, const float* bias, const Conv2dGeometry& g) {
    const int spatial = g.out_h() * g.out_w();
    const std::size_t planes = static_cast<std::size_t>(g.n) * static_cast<std::size_t>(g.out_c);
    const int grid_rows = static_cast<int>(std::min<std::size_t>(planes, static_cast<std::size_t>(INT_MAX)));
    add_channel_bias_kernel<<<grid_for_rows(grid_rows, spatial), kBlockSize, 0, context().stream()>>>(
        y, bias, planes, g.out_c, spatial);
    CUMNIST_CHECK_LAUNCH();
}
}  // namespace

void conv2d_forward(float* y, const float* x, const float* w, const float* bias, const Conv2dGeometry& g,
                    void* workspace, std::size_t workspace_bytes, Activation act) {
    if (g.n <= 0) return;
    Cudnn& cudnn = Cudnn::get();
    {
        std::lock_guard<std::mutex> lock(cudnn.mutex());
        const ConvPlan& p = cudnn.plan(g);
        require_workspace(p.forward_bytes, workspace_bytes, "forward", g);
        // beta = 0: y is overwritten and never read (it may hold NaN).
        const float alpha = 1.0f, beta = 0.0f;
        CUDNN_CHECK(cudnnConvolutionForward(cudnn.handle(), &alpha, p.x.get(), x, p.w.get(), w, p.conv.get(),
                                            kForwardAlgo, workspace, workspace_bytes, &beta, p.y.get(), y));
    }
    if (bias != nullptr) add_channel_bias(y, bias, g);
    // The activation in place, as the CPU computes it (elementwise.cu).
    if (act != Activation::None) act_dropout_forward(y, y, g.n, g.out_size(), act, 0.0f, 0, 0, 0, false, nullptr);
}

void conv2d_backward_data(float* dx, const float* dy, const float* w, const Conv2dGeometry& g, void* workspace,
                          std::size_t workspace_bytes) {
    if (g.n <= 0) return;
    Cudnn& cudnn = Cudnn::get();
    std::lock_guard<std::mutex> lock(cudnn.mutex());
    const ConvPlan& p = cudnn.plan(g);
    require_workspace(p.backward_data_bytes, workspace_bytes, "backward data", g);
    const float alpha = 1.0f, beta = 0.0f;  // overwrites dx
    CUDNN_CHECK(cudnnConvolutionBackwardData(cudnn.handle(), &alpha, p.w.get(), w, p.y.get(), dy, p.conv.get(),
                                             kBackwardDataAlgo, workspace, workspace_bytes, &beta, p.x.get(), dx));
}

void conv2d_backward_filter(float* dw, const float* dy, const float* x, const Conv2dGeometry& g, void* workspace,
                            std::size_t workspace_bytes) {
    if (g.n <= 0) {  // an empty sum over images
        const std::size_t count = static_cast<std::size_t>(g.out_c) * static_cast<std::size_t>(g.filter_size());
        if (count > 0) CUDA_CHECK(cudaMemsetAsync(dw, 0, count * sizeof(float), context().stream()));
        return;
    }
    Cudnn& cudnn = Cudnn::get();
    std::lock_guard<std::mutex> lock(cudnn.mutex());
    const ConvPlan& p = cudnn.plan(g);
    require_workspace(p.backward_filter_bytes, workspace_bytes, "backward filter", g);
    const float alpha = 1.0f, beta = 0.0f;  // overwrites dw
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(cudnn.handle(), &alpha, p.x.get(), x, p.y.get(), dy, p.conv.get(),
                                               kBackwardFilterAlgo, workspace, workspace_bytes, &beta, p.w.get(), dw));
}

void channel_bias_grad(float* db, const float* dy, int n, int channels, int spatial) {
    if (channels <= 0) return;
    if (n <= 0 || spatial <= 0) {  // an empty sum
        CUDA_CHECK(cudaMemsetAsync(db, 0, static_cast<std::size_t>(channels) * sizeof(float), context().stream()));
        return;
    }
    const unsigned grid = grid_for(static_cast<std::size_t>(channels), 1);  // one block per channel, capped
    channel_bias_grad_kernel<<<grid, kChannelBlock, 0, context().stream()>>>(db, dy, n, channels, spatial);
    CUMNIST_CHECK_LAUNCH();
}

void conv2d_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                     const Conv2dGeometry& g, void* workspace, std::size_t workspace_bytes) {
    channel_bias_grad(db, dy, g.n, g.out_c, g.out_h() * g.out_w());
    conv2d_backward_filter(dw, dy, x, g, workspace, workspace_bytes);
    if (dx != nullptr) conv2d_backward_data(dx, dy, w, g, workspace, workspace_bytes);
}

}  // namespace cumnist::cuda
