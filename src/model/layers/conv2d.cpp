// Conv2D: y = act(conv(x, w) + b) over images in the geometry's layouts, weights (filters,
// channels, kh, kw). The activation right after it in the spec runs in place on the convolution's
// output. A ReLU's backward is left to a max pooling right after, when there is one (it gates its
// dx with it in the same pass: ops::maxpool2d_backward's relu_y).
#include "../layer.h"

namespace cumnist::detail {
namespace {

class Conv2D final : public Layer {
public:
    Conv2D(const Conv2dGeometry& g, Activation act, bool relu_backward_in_next)
        : m_g(g), m_act(act), m_act_backward(act != Activation::None && !relu_backward_in_next) {}

    int out_size() const override { return m_g.out_size(); }
    bool has_parameters() const override { return true; }
    std::size_t scratch_bytes(int max_batch, Device device) const override {
        return ops::conv2d_workspace_bytes(m_g.with_batch(max_batch), device);
    }

    void forward(const Pass& pass, const LayerIO& io) override {
        const Conv2dGeometry g = m_g.with_batch(pass.n);
        ops::conv2d_forward(io.y, io.x, io.w, io.b, g, io.scratch, m_act);
    }

    void backward(const Pass& pass, const LayerIO& io) override {
        const Conv2dGeometry g = m_g.with_batch(pass.n);
        MatrixView<float> dpre = io.dy;
        if (m_act_backward) ops::act_dropout_backward(dpre, dpre, io.y, m_act, {}, nullptr);
        ops::conv2d_backward(io.dx, io.dw, io.db, dpre, io.x, io.w, g, io.scratch);
    }

private:
    Conv2dGeometry m_g;  // n set per call
    Activation m_act;
    bool m_act_backward;  // false: the next layer already applied act' to dy
};

}  // namespace

std::unique_ptr<Layer> make_conv2d(const Conv2dGeometry& g, Activation act, bool relu_backward_in_next) {
    CUMNIST_CHECK(!relu_backward_in_next || act == Activation::Relu, "only a ReLU's backward can be left to the next layer");
    return std::make_unique<Conv2D>(g, act, relu_backward_in_next);
}

}  // namespace cumnist::detail
