// Dense: y = act(x · wᵀ + b), then dropout when the spec has one right after, as one GEMM and
// the fused epilogue (ops::bias_act_dropout_forward). Weights (out, in).
#include "../layer.h"

namespace cumnist::detail {
namespace {

class Dense final : public Layer {
public:
    Dense(int in, int out, Activation act, DropoutSpec dropout) : m_in(in), m_out(out), m_act(act), m_dropout(dropout) {}

    int out_size() const override { return m_out; }
    bool has_parameters() const override { return true; }
    // The activation before dropout, kept apart from the output only when dropout is applied.
    int aux_size() const override { return m_dropout.rate > 0.0f ? m_out : 0; }
    bool ends_in_plain_bias() const override { return m_act == Activation::None && m_dropout.rate == 0.0f; }
    int dense_outputs() const override { return m_out; }

    void forward(const Pass& pass, const LayerIO& io) override {
        const Dropout d = m_dropout.at(pass);
        // a (n, out) = x (n, in) · wᵀ, then a ← act(a + b), y ← dropout(a) (or y is a)
        MatrixView<float> a = d.active() ? io.aux : io.y;
        ops::gemm(a, io.x, Trans::No, io.w, Trans::Yes);
        if (io.b.data == nullptr) return;  // the caller adds the bias (ends_in_plain_bias)
        ops::bias_act_dropout_forward(io.y, a, io.b, m_act, d, pass.step);
    }

    void backward(const Pass& pass, const LayerIO& io) override {
        const Dropout d = m_dropout.at(pass);
        MatrixView<float> dpre = io.dy;
        const bool through = io.next_w.data != nullptr;  // dy is next_dy · next_w, not yet formed
        // db = Σ_rows dpre
        if (m_act != Activation::None || d.active()) {
            // ∂loss/∂pre = ∂loss/∂y · keep/(1 − rate) · act'(pre), in place, and db with it. ReLU's
            // backward reads the output y (after dropout), the others the activation before dropout (ops.h).
            const bool from_output = m_act == Activation::Relu || !d.active();
            const MatrixView<const float> saved = from_output ? io.y : io.aux;
            if (through) ops::act_dropout_backward_through(dpre, io.next_dy, io.next_w, saved, m_act, d, pass.step, io.db);
            else ops::act_dropout_backward(dpre, dpre, saved, m_act, d, pass.step, io.db);
        } else {
            if (through) ops::gemm(dpre, io.next_dy, Trans::No, io.next_w, Trans::No);
            if (io.db.data != nullptr) ops::bias_grad(io.db, dpre);  // else the caller computed it (ends_in_plain_bias)
        }
        // dw (out, in) = dpreᵀ (out, n) · x (n, in);  dx (n, in) = dpre · w
        ops::gemm(io.dw, dpre, Trans::Yes, io.x, Trans::No);
        if (io.dx.data != nullptr) ops::gemm(io.dx, dpre, Trans::No, io.w, Trans::No);
    }

private:
    int m_in, m_out;
    Activation m_act;
    DropoutSpec m_dropout;
};

}  // namespace

std::unique_ptr<Layer> make_dense(int in, int out, Activation act, DropoutSpec dropout) {
    return std::make_unique<Dense>(in, out, act, dropout);
}

}  // namespace cumnist::detail
