// The op seam: checks shapes, devices and aliasing once per call, then dispatches to
// cumnist::cpu or cumnist::cuda with raw pointers.
#include "cumnist/ops.h"

#include "backend.h"
#include "cumnist/philox.h"

namespace cumnist {

const char* to_string(Activation a) {
    switch (a) {
        case Activation::None: return "none";
        case Activation::Relu: return "relu";
        case Activation::Sigmoid: return "sigmoid";
        case Activation::Tanh: return "tanh";
    }
    return "?";
}

const char* to_string(ImageLayout layout) {
    switch (layout) {
        case ImageLayout::Nchw: return "nchw";
        case ImageLayout::Nchw8c: return "nChw8c";
        case ImageLayout::Nchw16c: return "nChw16c";
    }
    return "?";
}

int channel_block(ImageLayout layout) {
    switch (layout) {
        case ImageLayout::Nchw: return 1;
        case ImageLayout::Nchw8c: return 8;
        case ImageLayout::Nchw16c: return 16;
    }
    return 1;
}

bool Conv2dGeometry::operator==(const Conv2dGeometry& o) const {
    return n == o.n && in_c == o.in_c && in_h == o.in_h && in_w == o.in_w && out_c == o.out_c && k_h == o.k_h &&
           k_w == o.k_w && stride_h == o.stride_h && stride_w == o.stride_w && pad_top == o.pad_top &&
           pad_left == o.pad_left && pad_bottom == o.pad_bottom && pad_right == o.pad_right &&
           src_layout == o.src_layout && dst_layout == o.dst_layout;
}

namespace ops {
namespace {

// Runs backend::fn(args...) on `device`. A CPU op first makes sure the calling thread and its
// OpenMP workers flush denormals (cpu::prepare_thread; a thread-local check after the first call).
#define CUMNIST_DISPATCH(device, fn, ...)         \
    do {                                          \
        if ((device) == Device::Cpu) {            \
            ::cumnist::cpu::prepare_thread();     \
            ::cumnist::cpu::fn(__VA_ARGS__);      \
        } else {                                  \
            ::cumnist::cuda::fn(__VA_ARGS__);     \
        }                                         \
    } while (0)

template <class T>
void require_shape(const char* op, const char* name, const MatrixView<T>& v, int rows, int cols) {
    CUMNIST_CHECK(v.rows == rows && v.cols == cols, "{}: {} is ({}, {}), expected ({}, {})", op, name, v.rows, v.cols,
                  rows, cols);
}

template <class T>
void require_data(const char* op, const char* name, const MatrixView<T>& v) {
    CUMNIST_CHECK(v.data != nullptr || v.size() == 0, "{}: {} has no data", op, name);
    CUMNIST_CHECK(v.rows >= 0 && v.cols >= 0, "{}: {} has negative shape ({}, {})", op, name, v.rows, v.cols);
}

template <class T, class... Rest>
void require_device(const char* op, Device device, const MatrixView<T>& v, const Rest&... rest) {
    CUMNIST_CHECK(v.device == device, "{}: tensors on different devices ({} and {})", op, to_string(v.device),
                  to_string(device));
    if constexpr (sizeof...(rest) > 0) require_device(op, device, rest...);
}

// True when the two views' memory ranges overlap.
template <class A, class B>
bool overlaps(const MatrixView<A>& a, const MatrixView<B>& b) {
    const auto* a0 = reinterpret_cast<const char*>(a.data);
    const auto* b0 = reinterpret_cast<const char*>(b.data);
    return a.size() > 0 && b.size() > 0 && a0 < b0 + b.size() * sizeof(B) && b0 < a0 + a.size() * sizeof(A);
}

template <class A, class B>
bool same_view(const MatrixView<A>& a, const MatrixView<B>& b) {
    return static_cast<const void*>(a.data) == static_cast<const void*>(b.data) && a.rows == b.rows && a.cols == b.cols;
}

void check_dropout(const char* op, const Dropout& d, const uint64_t* step) {
    CUMNIST_CHECK(d.rate >= 0.0f && d.rate < 1.0f, "{}: dropout rate {} outside [0, 1)", op, d.rate);
    CUMNIST_CHECK(!d.active() || step != nullptr, "{}: dropout needs the step counter", op);
}

}  // namespace

void gemm(MatrixView<float> c, MatrixView<const float> a, Trans ta, MatrixView<const float> b, Trans tb, float alpha,
          float beta) {
    constexpr const char* op = "gemm";
    require_data(op, "c", c), require_data(op, "a", a), require_data(op, "b", b);
    require_device(op, c.device, a, b);
    const int m = ta == Trans::No ? a.rows : a.cols;
    const int k = ta == Trans::No ? a.cols : a.rows;
    const int kb = tb == Trans::No ? b.rows : b.cols;
    const int n = tb == Trans::No ? b.cols : b.rows;
    CUMNIST_CHECK(k == kb, "gemm: inner dimensions differ: op(a) is ({}, {}), op(b) is ({}, {})", m, k, kb, n);
    require_shape(op, "c", c, m, n);
    CUMNIST_CHECK(!overlaps(c, a) && !overlaps(c, b), "gemm: c overlaps an input");
    if (m == 0 || n == 0) return;
    CUMNIST_DISPATCH(c.device, gemm, c.data, a.data, b.data, m, n, k, ta, tb, alpha, beta);
}

void bias_act_dropout_forward(MatrixView<float> h, MatrixView<float> a, MatrixView<const float> bias, Activation act,
                              const Dropout& dropout, const uint64_t* step) {
    constexpr const char* op = "bias_act_dropout_forward";
    require_data(op, "h", h), require_data(op, "a", a), require_data(op, "bias", bias);
    require_device(op, a.device, h, bias);
    require_shape(op, "h", h, a.rows, a.cols);
    require_shape(op, "bias", bias, 1, a.cols);
    check_dropout(op, dropout, step);
    CUMNIST_CHECK(!overlaps(h, a) || (same_view(h, a) && !dropout.active()),
                  "{}: h may alias a only without active dropout", op);
    CUMNIST_CHECK(!overlaps(bias, a) && !overlaps(bias, h), "{}: bias overlaps an output", op);
    if (a.size() == 0) return;
    CUMNIST_DISPATCH(a.device, bias_act_dropout_forward, h.data, a.data, bias.data, a.rows, a.cols, act, dropout.rate,
                     dropout_keep_threshold(dropout.rate), dropout.seed, dropout.stream, dropout.active(), step);
}

void act_dropout_backward(MatrixView<float> dpre, MatrixView<const float> dh, MatrixView<const float> saved,
                          Activation act, const Dropout& dropout, const uint64_t* step, MatrixView<float> db) {
    constexpr const char* op = "act_dropout_backward";
    require_data(op, "dpre", dpre), require_data(op, "dh", dh), require_data(op, "saved", saved);
    require_device(op, dpre.device, dh, saved);
    require_shape(op, "dh", dh, dpre.rows, dpre.cols);
    require_shape(op, "saved", saved, dpre.rows, dpre.cols);
    check_dropout(op, dropout, step);
    CUMNIST_CHECK(!overlaps(dpre, dh) || same_view(dpre, dh), "{}: dpre partially overlaps dh", op);
    CUMNIST_CHECK(!overlaps(dpre, saved), "{}: dpre overlaps saved", op);
    if (db.data != nullptr) {
        require_device(op, dpre.device, db);
        require_shape(op, "db", db, 1, dpre.cols);
        CUMNIST_CHECK(!overlaps(db, dpre) && !overlaps(db, dh) && !overlaps(db, saved), "{}: db overlaps an operand",
                      op);
        if (dpre.rows == 0) {  // the bias gradient of an empty batch: zeros, as bias_grad gives
            bias_grad(db, dpre);
            return;
        }
    }
    if (dpre.size() == 0) return;
    CUMNIST_DISPATCH(dpre.device, act_dropout_backward, dpre.data, dh.data, saved.data, dpre.rows, dpre.cols, act,
                     dropout.rate, dropout_keep_threshold(dropout.rate), dropout.seed, dropout.stream,
                     dropout.active(), step, db.data);
}

void act_dropout_backward_through(MatrixView<float> dpre, MatrixView<const float> dy_next,
                                  MatrixView<const float> w_next, MatrixView<const float> saved, Activation act,
                                  const Dropout& dropout, const uint64_t* step, MatrixView<float> db) {
    constexpr const char* op = "act_dropout_backward_through";
    require_data(op, "dpre", dpre), require_data(op, "dy_next", dy_next), require_data(op, "w_next", w_next);
    require_data(op, "saved", saved), require_data(op, "db", db);
    const int n = dpre.rows, cols = dpre.cols, k = dy_next.cols;
    CUMNIST_CHECK(k >= 1 && k <= kMaxNextOutputs, "{}: the next layer has {} outputs, expected 1 to {}", op, k,
                  kMaxNextOutputs);
    require_device(op, dpre.device, dy_next, w_next, saved, db);
    require_shape(op, "dy_next", dy_next, n, k);
    require_shape(op, "w_next", w_next, k, cols);
    require_shape(op, "saved", saved, n, cols);
    require_shape(op, "db", db, 1, cols);
    check_dropout(op, dropout, step);
    CUMNIST_CHECK(!overlaps(dpre, dy_next) && !overlaps(dpre, w_next) && !overlaps(dpre, saved) && !overlaps(dpre, db),
                  "{}: dpre overlaps another operand", op);
    CUMNIST_CHECK(!overlaps(db, dy_next) && !overlaps(db, w_next) && !overlaps(db, saved), "{}: db overlaps an input",
                  op);
    if (cols == 0) return;
    if (n == 0) {  // the bias gradient of an empty batch: zeros, as bias_grad gives
        bias_grad(db, dpre);
        return;
    }
    CUMNIST_DISPATCH(dpre.device, act_dropout_backward_through, dpre.data, dy_next.data, w_next.data, k, saved.data, n,
                     cols, act, dropout.rate, dropout_keep_threshold(dropout.rate), dropout.seed, dropout.stream,
                     dropout.active(), step, db.data);
}

void act_dropout_forward(MatrixView<float> y, MatrixView<const float> x, Activation act, const Dropout& dropout,
                         const uint64_t* step) {
    constexpr const char* op = "act_dropout_forward";
    require_data(op, "y", y), require_data(op, "x", x);
    require_device(op, y.device, x);
    require_shape(op, "x", x, y.rows, y.cols);
    check_dropout(op, dropout, step);
    CUMNIST_CHECK(!overlaps(y, x) || (same_view(y, x) && !dropout.active()),
                  "{}: y may alias x only without active dropout", op);
    if (y.size() == 0) return;
    CUMNIST_DISPATCH(y.device, act_dropout_forward, y.data, x.data, y.rows, y.cols, act, dropout.rate,
                     dropout_keep_threshold(dropout.rate), dropout.seed, dropout.stream, dropout.active(), step);
}

void bias_grad(MatrixView<float> db, MatrixView<const float> dy) {
    constexpr const char* op = "bias_grad";
    require_data(op, "db", db), require_data(op, "dy", dy);
    require_device(op, db.device, dy);
    require_shape(op, "db", db, 1, dy.cols);
    CUMNIST_CHECK(!overlaps(db, dy), "{}: db overlaps dy", op);
    if (dy.cols == 0) return;
    CUMNIST_DISPATCH(db.device, bias_grad, db.data, dy.data, dy.rows, dy.cols);
}

namespace {

void check_geometry(const char* op, const Conv2dGeometry& g) {
    CUMNIST_CHECK(g.n >= 0 && g.in_c > 0 && g.in_h > 0 && g.in_w > 0 && g.out_c > 0 && g.k_h > 0 && g.k_w > 0,
                  "{}: sizes must be positive (images {}x{}x{}x{}, filters {}x{}x{})", op, g.n, g.in_c, g.in_h, g.in_w,
                  g.out_c, g.k_h, g.k_w);
    CUMNIST_CHECK(g.stride_h > 0 && g.stride_w > 0, "{}: strides must be positive, got {}x{}", op, g.stride_h,
                  g.stride_w);
    CUMNIST_CHECK(g.pad_top >= 0 && g.pad_left >= 0 && g.pad_bottom >= 0 && g.pad_right >= 0 && g.pad_top < g.k_h &&
                      g.pad_bottom < g.k_h && g.pad_left < g.k_w && g.pad_right < g.k_w,
                  "{}: padding must be in [0, kernel) on each side", op);
    CUMNIST_CHECK(g.in_h + g.pad_top + g.pad_bottom >= g.k_h && g.in_w + g.pad_left + g.pad_right >= g.k_w,
                  "{}: the {}x{} kernel is larger than the padded {}x{} image", op, g.k_h, g.k_w, g.in_h, g.in_w);
}

// A tensor of `channels` channels in `layout` on `device` (ops.h: the blocked layouts only on the
// CPU, for a multiple of their block of channels).
void check_layout(const char* op, const char* what, ImageLayout layout, int channels, Device device) {
    if (layout == ImageLayout::Nchw) return;
    CUMNIST_CHECK(device == Device::Cpu, "{}: {} in layout {} is CPU-only", op, what, to_string(layout));
    CUMNIST_CHECK(channels % channel_block(layout) == 0, "{}: {} in layout {} needs a multiple of {} channels, got {}",
                  op, what, to_string(layout), channel_block(layout), channels);
}

void check_layouts(const char* op, const Conv2dGeometry& g, Device device) {
    check_layout(op, "the input", g.src_layout, g.in_c, device);
    check_layout(op, "the output", g.dst_layout, g.out_c, device);
}

void check_workspace(const char* op, const Conv2dGeometry& g, MatrixView<uint8_t> ws, Device device) {
    require_data(op, "workspace", ws);
    if (ws.size() > 0) require_device(op, device, ws);
    check_layouts(op, g, device);
}

}  // namespace

ImageLayouts conv2d_preferred_layouts(const Conv2dGeometry& g, Device device) {
    check_geometry("conv2d_preferred_layouts", g);
    if (device != Device::Cpu) return {};
    cpu::prepare_thread();
    return cpu::conv2d_preferred_layouts(g);
}

std::size_t conv2d_workspace_bytes(const Conv2dGeometry& g, Device device) {
    check_geometry("conv2d_workspace_bytes", g);
    check_layouts("conv2d_workspace_bytes", g, device);
    if (device == Device::Cpu) return cpu::conv2d_workspace_bytes(g);
    return cuda::conv2d_workspace_bytes(g);
}

void conv2d_forward(MatrixView<float> y, MatrixView<const float> x, MatrixView<const float> w,
                    MatrixView<const float> bias, const Conv2dGeometry& g, MatrixView<uint8_t> workspace,
                    Activation act) {
    constexpr const char* op = "conv2d_forward";
    check_geometry(op, g);
    require_data(op, "y", y), require_data(op, "x", x), require_data(op, "w", w), require_data(op, "bias", bias);
    require_device(op, y.device, x, w, bias);
    check_workspace(op, g, workspace, y.device);
    require_shape(op, "x", x, g.n, g.in_size());
    require_shape(op, "y", y, g.n, g.out_size());
    require_shape(op, "w", w, g.out_c, g.filter_size());
    require_shape(op, "bias", bias, 1, g.out_c);
    CUMNIST_CHECK(!overlaps(y, x) && !overlaps(y, w) && !overlaps(y, bias), "{}: y overlaps an input", op);
    if (g.n == 0) return;
    CUMNIST_DISPATCH(y.device, conv2d_forward, y.data, x.data, w.data, bias.data, g, workspace.data, workspace.size(),
                     act);
}

void conv2d_backward_data(MatrixView<float> dx, MatrixView<const float> dy, MatrixView<const float> w,
                          const Conv2dGeometry& g, MatrixView<uint8_t> workspace) {
    constexpr const char* op = "conv2d_backward_data";
    check_geometry(op, g);
    require_data(op, "dx", dx), require_data(op, "dy", dy), require_data(op, "w", w);
    require_device(op, dx.device, dy, w);
    check_workspace(op, g, workspace, dx.device);
    require_shape(op, "dx", dx, g.n, g.in_size());
    require_shape(op, "dy", dy, g.n, g.out_size());
    require_shape(op, "w", w, g.out_c, g.filter_size());
    CUMNIST_CHECK(!overlaps(dx, dy) && !overlaps(dx, w), "{}: dx overlaps an input", op);
    if (g.n == 0) return;
    CUMNIST_DISPATCH(dx.device, conv2d_backward_data, dx.data, dy.data, w.data, g, workspace.data, workspace.size());
}

void conv2d_backward_filter(MatrixView<float> dw, MatrixView<const float> dy, MatrixView<const float> x,
                            const Conv2dGeometry& g, MatrixView<uint8_t> workspace) {
    constexpr const char* op = "conv2d_backward_filter";
    check_geometry(op, g);
    require_data(op, "dw", dw), require_data(op, "dy", dy), require_data(op, "x", x);
    require_device(op, dw.device, dy, x);
    check_workspace(op, g, workspace, dw.device);
    require_shape(op, "dw", dw, g.out_c, g.filter_size());
    require_shape(op, "dy", dy, g.n, g.out_size());
    require_shape(op, "x", x, g.n, g.in_size());
    CUMNIST_CHECK(!overlaps(dw, dy) && !overlaps(dw, x), "{}: dw overlaps an input", op);
    if (g.n == 0) {
        fill_zero(dw);
        return;
    }
    CUMNIST_DISPATCH(dw.device, conv2d_backward_filter, dw.data, dy.data, x.data, g, workspace.data, workspace.size());
}

void channel_bias_grad(MatrixView<float> db, MatrixView<const float> dy, int channels) {
    constexpr const char* op = "channel_bias_grad";
    require_data(op, "db", db), require_data(op, "dy", dy);
    require_device(op, db.device, dy);
    CUMNIST_CHECK(channels > 0 && dy.cols % channels == 0, "{}: {} columns are not {} channels of equal size", op,
                  dy.cols, channels);
    require_shape(op, "db", db, 1, channels);
    CUMNIST_CHECK(!overlaps(db, dy), "{}: db overlaps dy", op);
    CUMNIST_DISPATCH(db.device, channel_bias_grad, db.data, dy.data, dy.rows, channels, dy.cols / channels);
}

void conv2d_backward(MatrixView<float> dx, MatrixView<float> dw, MatrixView<float> db, MatrixView<const float> dy,
                     MatrixView<const float> x, MatrixView<const float> w, const Conv2dGeometry& g,
                     MatrixView<uint8_t> workspace) {
    constexpr const char* op = "conv2d_backward";
    check_geometry(op, g);
    const bool want_dx = dx.data != nullptr;
    require_data(op, "dw", dw), require_data(op, "db", db), require_data(op, "dy", dy), require_data(op, "x", x);
    require_data(op, "w", w);
    require_device(op, dw.device, db, dy, x, w);
    if (want_dx) require_device(op, dw.device, dx);
    check_workspace(op, g, workspace, dw.device);
    require_shape(op, "dw", dw, g.out_c, g.filter_size());
    require_shape(op, "db", db, 1, g.out_c);
    require_shape(op, "dy", dy, g.n, g.out_size());
    require_shape(op, "x", x, g.n, g.in_size());
    require_shape(op, "w", w, g.out_c, g.filter_size());
    if (want_dx) require_shape(op, "dx", dx, g.n, g.in_size());
    for (const MatrixView<const float>& in : {dy, x, w})
        CUMNIST_CHECK(!overlaps(dw, in) && !overlaps(db, in) && (!want_dx || !overlaps(dx, in)),
                      "{}: an output overlaps an input", op);
    CUMNIST_CHECK(!overlaps(dw, db) && (!want_dx || (!overlaps(dx, dw) && !overlaps(dx, db))),
                  "{}: two outputs overlap", op);
    if (g.n == 0) {
        fill_zero(dw);
        fill_zero(db);
        return;
    }
    CUMNIST_DISPATCH(dw.device, conv2d_backward, dx.data, dw.data, db.data, dy.data, x.data, w.data, g, workspace.data,
                     workspace.size());
}

namespace {
void check_pool(const char* op, const Pool2dGeometry& g) {
    CUMNIST_CHECK(g.n >= 0 && g.c > 0 && g.in_h > 0 && g.in_w > 0 && g.k_h > 0 && g.k_w > 0 && g.stride_h > 0 &&
                      g.stride_w > 0,
                  "{}: sizes and strides must be positive", op);
    CUMNIST_CHECK(g.k_h <= g.in_h && g.k_w <= g.in_w, "{}: the {}x{} window is larger than the {}x{} image", op, g.k_h,
                  g.k_w, g.in_h, g.in_w);
}
void check_pool_layouts(const char* op, const Pool2dGeometry& g, Device device) {
    check_layout(op, "the input", g.in_layout, g.c, device);
    check_layout(op, "the output", g.out_layout, g.c, device);
}
}  // namespace

void maxpool2d_forward(MatrixView<float> y, MatrixView<int32_t> argmax, MatrixView<const float> x,
                       const Pool2dGeometry& g) {
    constexpr const char* op = "maxpool2d_forward";
    check_pool(op, g);
    require_data(op, "y", y), require_data(op, "argmax", argmax), require_data(op, "x", x);
    require_device(op, y.device, argmax, x);
    check_pool_layouts(op, g, y.device);
    require_shape(op, "x", x, g.n, g.in_size());
    require_shape(op, "y", y, g.n, g.out_size());
    require_shape(op, "argmax", argmax, g.n, g.out_size());
    CUMNIST_CHECK(!overlaps(y, x) && !overlaps(argmax, x) && !overlaps(y, argmax), "{}: outputs overlap", op);
    if (g.n == 0) return;
    CUMNIST_DISPATCH(y.device, maxpool2d_forward, y.data, argmax.data, x.data, g);
}

void maxpool2d_backward(MatrixView<float> dx, MatrixView<const float> dy, MatrixView<const int32_t> argmax,
                        const Pool2dGeometry& g) {
    maxpool2d_backward(dx, dy, argmax, g, MatrixView<const float>{});
}

void maxpool2d_backward(MatrixView<float> dx, MatrixView<const float> dy, MatrixView<const int32_t> argmax,
                        const Pool2dGeometry& g, MatrixView<const float> relu_y) {
    constexpr const char* op = "maxpool2d_backward";
    check_pool(op, g);
    require_data(op, "dx", dx), require_data(op, "dy", dy), require_data(op, "argmax", argmax);
    require_device(op, dx.device, dy, argmax);
    check_pool_layouts(op, g, dx.device);
    require_shape(op, "dx", dx, g.n, g.in_size());
    require_shape(op, "dy", dy, g.n, g.out_size());
    require_shape(op, "argmax", argmax, g.n, g.out_size());
    CUMNIST_CHECK(!overlaps(dx, dy) && !overlaps(dx, argmax), "{}: dx overlaps an input", op);
    const bool gated = relu_y.data != nullptr;
    if (gated) {
        require_device(op, dx.device, relu_y);
        require_shape(op, "relu_y", relu_y, g.n, g.out_size());
        CUMNIST_CHECK(!overlaps(dx, relu_y), "{}: dx overlaps relu_y", op);
    }
    if (g.n == 0) return;
    CUMNIST_DISPATCH(dx.device, maxpool2d_backward, dx.data, dy.data, argmax.data, gated ? relu_y.data : nullptr, g);
}

namespace {
// softmax_xent's checks, shared with bias_softmax_xent.
void check_softmax_xent(const char* op, MatrixView<float> dlogits, MatrixView<float> row_loss,
                        MatrixView<float> row_correct, MatrixView<const float> logits,
                        MatrixView<const uint8_t> labels) {
    require_data(op, "logits", logits), require_data(op, "labels", labels);
    require_data(op, "row_loss", row_loss), require_data(op, "row_correct", row_correct);
    const int n = logits.rows;
    CUMNIST_CHECK(logits.cols >= 1, "{}: logits need at least one class", op);
    CUMNIST_CHECK(logits.cols <= 256, "{}: {} classes exceed the uint8 label range", op, logits.cols);
    require_device(op, logits.device, labels, row_loss, row_correct);
    require_shape(op, "labels", labels, 1, n);
    require_shape(op, "row_loss", row_loss, 1, n);
    require_shape(op, "row_correct", row_correct, 1, n);
    if (dlogits.data != nullptr) {
        require_device(op, logits.device, dlogits);
        require_shape(op, "dlogits", dlogits, n, logits.cols);
        CUMNIST_CHECK(!overlaps(dlogits, logits) || same_view(dlogits, logits), "{}: dlogits partially overlaps logits",
                      op);
    }
}
}  // namespace

void softmax_xent(MatrixView<float> dlogits, MatrixView<float> row_loss, MatrixView<float> row_correct,
                  MatrixView<const float> logits, MatrixView<const uint8_t> labels, float grad_scale,
                  double* totals) {
    check_softmax_xent("softmax_xent", dlogits, row_loss, row_correct, logits, labels);
    const int n = logits.rows;
    if (n == 0) return;
    CUMNIST_DISPATCH(logits.device, softmax_xent, dlogits.data, row_loss.data, row_correct.data, logits.data,
                     labels.data, n, logits.cols, grad_scale, totals);
}

void bias_softmax_xent(MatrixView<float> dlogits, MatrixView<float> db, MatrixView<float> row_loss,
                       MatrixView<float> row_correct, MatrixView<float> logits, MatrixView<const float> bias,
                       MatrixView<const uint8_t> labels, float grad_scale, double* totals) {
    constexpr const char* op = "bias_softmax_xent";
    require_data(op, "dlogits", dlogits), require_data(op, "db", db), require_data(op, "bias", bias);
    check_softmax_xent(op, dlogits, row_loss, row_correct, logits, labels);
    const int n = logits.rows, classes = logits.cols;
    require_shape(op, "dlogits", dlogits, n, classes);  // required here (check_softmax_xent allows none)
    require_device(op, logits.device, dlogits, db, bias);
    require_shape(op, "bias", bias, 1, classes);
    require_shape(op, "db", db, 1, classes);
    CUMNIST_CHECK(!overlaps(dlogits, logits), "{}: dlogits overlaps logits", op);
    CUMNIST_CHECK(!overlaps(bias, logits) && !overlaps(bias, dlogits), "{}: bias overlaps an output", op);
    CUMNIST_CHECK(!overlaps(db, logits) && !overlaps(db, dlogits) && !overlaps(db, bias) && !overlaps(db, row_loss) &&
                      !overlaps(db, row_correct) && !overlaps(db, labels),
                  "{}: db overlaps another tensor", op);
    CUMNIST_CHECK(!overlaps(labels, logits) && !overlaps(labels, dlogits), "{}: labels overlap an output", op);
    CUMNIST_CHECK(!overlaps(row_loss, logits) && !overlaps(row_loss, dlogits) && !overlaps(row_loss, bias) &&
                      !overlaps(row_correct, logits) && !overlaps(row_correct, dlogits) && !overlaps(row_correct, bias) &&
                      !overlaps(row_loss, row_correct),
                  "{}: row_loss or row_correct overlaps another tensor", op);
    if (n == 0) {  // an empty batch: zeros, as bias_grad gives
        bias_grad(db, dlogits);
        return;
    }
    CUMNIST_DISPATCH(logits.device, bias_softmax_xent, dlogits.data, db.data, row_loss.data, row_correct.data,
                     logits.data, bias.data, labels.data, n, classes, grad_scale, totals);
}

void softmax(MatrixView<float> probs, MatrixView<const float> logits) {
    constexpr const char* op = "softmax";
    require_data(op, "probs", probs), require_data(op, "logits", logits);
    require_device(op, probs.device, logits);
    require_shape(op, "probs", probs, logits.rows, logits.cols);
    CUMNIST_CHECK(!overlaps(probs, logits) || same_view(probs, logits), "{}: probs partially overlaps logits", op);
    if (probs.size() == 0) return;
    CUMNIST_DISPATCH(probs.device, softmax, probs.data, logits.data, logits.rows, logits.cols);
}

void accumulate_metrics(double* totals, MatrixView<const float> row_loss, MatrixView<const float> row_correct) {
    constexpr const char* op = "accumulate_metrics";
    require_data(op, "row_loss", row_loss), require_data(op, "row_correct", row_correct);
    CUMNIST_CHECK(totals != nullptr, "{}: no totals", op);
    require_device(op, row_loss.device, row_correct);
    require_shape(op, "row_correct", row_correct, row_loss.rows, row_loss.cols);
    if (row_loss.size() == 0) return;
    CUMNIST_DISPATCH(row_loss.device, accumulate_metrics, totals, row_loss.data, row_correct.data,
                     static_cast<int>(row_loss.size()));
}

void gather_batch(MatrixView<float> x, MatrixView<uint8_t> labels_out, MatrixView<const uint8_t> images,
                  MatrixView<const uint8_t> labels, MatrixView<const int32_t> order, const uint64_t* batch_index,
                  int batch_size) {
    constexpr const char* op = "gather_batch";
    require_data(op, "x", x), require_data(op, "labels_out", labels_out), require_data(op, "images", images);
    require_data(op, "labels", labels), require_data(op, "order", order);
    require_device(op, x.device, labels_out, images, labels, order);
    CUMNIST_CHECK(batch_index != nullptr, "{}: no batch index", op);
    require_shape(op, "images", images, images.rows, x.cols);
    require_shape(op, "labels", labels, 1, images.rows);
    require_shape(op, "labels_out", labels_out, 1, x.rows);
    // `order` maps batch positions to rows of `images`: a resident data set's permutation (as long
    // as the data set) or the streaming ring's row map (as long as the epoch, the ring shorter).
    CUMNIST_CHECK(order.rows == 1 && order.cols >= x.rows, "{}: order is ({}, {}), expected (1, n) with n >= {}", op,
                  order.rows, order.cols, x.rows);
    CUMNIST_CHECK(x.rows <= batch_size, "{}: {} rows exceed the batch size {}", op, x.rows, batch_size);
    if (x.size() == 0) return;
    CUMNIST_DISPATCH(x.device, gather_batch, x.data, labels_out.data, images.data, labels.data, order.data, batch_index,
                     x.rows, x.cols, batch_size);
}

void u8_to_float(MatrixView<float> x, MatrixView<const uint8_t> pixels) {
    constexpr const char* op = "u8_to_float";
    require_data(op, "x", x), require_data(op, "pixels", pixels);
    require_device(op, x.device, pixels);
    require_shape(op, "pixels", pixels, x.rows, x.cols);
    if (x.size() == 0) return;
    CUMNIST_DISPATCH(x.device, u8_to_float, x.data, pixels.data, x.size());
}

void increment(uint64_t* counter, Device device) {
    CUMNIST_CHECK(counter != nullptr, "increment: no counter");
    CUMNIST_DISPATCH(device, increment, counter);
}

namespace {
void check_update(const char* op, MatrixView<float> w, MatrixView<const float> g) {
    require_data(op, "w", w), require_data(op, "g", g);
    require_device(op, w.device, g);
    require_shape(op, "g", g, w.rows, w.cols);
    CUMNIST_CHECK(!overlaps(w, g), "{}: w overlaps g", op);
}
void check_state(const char* op, const char* name, MatrixView<float> s, MatrixView<float> w) {
    require_data(op, name, s);
    require_device(op, w.device, s);
    require_shape(op, name, s, w.rows, w.cols);
    CUMNIST_CHECK(!overlaps(s, w), "{}: {} overlaps w", op, name);
}
}  // namespace

void adam_step(MatrixView<float> w, MatrixView<float> m, MatrixView<float> v, MatrixView<const float> g,
               const AdamConfig& cfg, const uint64_t* step, uint64_t* advance) {
    constexpr const char* op = "adam_step";
    check_update(op, w, g);
    check_state(op, "m", m, w);
    check_state(op, "v", v, w);
    CUMNIST_CHECK(!overlaps(m, v), "{}: m overlaps v", op);
    CUMNIST_CHECK(step != nullptr, "{}: no step counter", op);
    if (w.size() == 0 && advance == nullptr) return;
    CUMNIST_DISPATCH(w.device, adam_step, w.data, m.data, v.data, g.data, w.size(), cfg.lr, cfg.lr_scale, cfg.beta1,
                     cfg.beta2, cfg.epsilon, step, advance);
}

void sgd_step(MatrixView<float> w, MatrixView<float> velocity, MatrixView<const float> g, const SgdConfig& cfg,
              uint64_t* advance) {
    constexpr const char* op = "sgd_step";
    check_update(op, w, g);
    check_state(op, "velocity", velocity, w);
    if (w.size() == 0 && advance == nullptr) return;
    CUMNIST_DISPATCH(w.device, sgd_step, w.data, velocity.data, g.data, w.size(), cfg.lr, cfg.lr_scale, cfg.momentum,
                     advance);
}

void rmsprop_step(MatrixView<float> w, MatrixView<float> s, MatrixView<const float> g, const RmsPropConfig& cfg,
                  uint64_t* advance) {
    constexpr const char* op = "rmsprop_step";
    check_update(op, w, g);
    check_state(op, "s", s, w);
    if (w.size() == 0 && advance == nullptr) return;
    CUMNIST_DISPATCH(w.device, rmsprop_step, w.data, s.data, g.data, w.size(), cfg.lr, cfg.lr_scale, cfg.rho,
                     cfg.epsilon, advance);
}

void fill_zero(MatrixView<float> x) {
    require_data("fill_zero", "x", x);
    if (x.size() == 0) return;
    CUMNIST_DISPATCH(x.device, fill_zero, x.data, x.size());
}

#undef CUMNIST_DISPATCH

}  // namespace ops
}  // namespace cumnist
