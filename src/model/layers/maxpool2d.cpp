// MaxPool2D: the maximum of each window, its position kept for the backward pass (ops.h: the
// first maximum in window order, the same on every device). After a convolution with a ReLU its
// backward also applies the ReLU's (relu_gate; the convolution then skips it).
#include "../layer.h"

namespace cumnist::detail {
namespace {

class MaxPool2D final : public Layer {
public:
    MaxPool2D(const Pool2dGeometry& g, bool relu_gate) : m_g(g), m_relu_gate(relu_gate) {}

    int out_size() const override { return m_g.out_size(); }
    int index_size() const override { return m_g.out_size(); }

    void forward(const Pass& pass, const LayerIO& io) override {
        Pool2dGeometry g = m_g;
        g.n = pass.n;
        ops::maxpool2d_forward(io.y, io.index, io.x, g);
    }

    void backward(const Pass& pass, const LayerIO& io) override {
        if (io.dx.data == nullptr) return;
        Pool2dGeometry g = m_g;
        g.n = pass.n;
        ops::maxpool2d_backward(io.dx, io.dy, io.index, g, m_relu_gate ? MatrixView<const float>(io.y) : MatrixView<const float>{});
    }

private:
    Pool2dGeometry m_g;
    bool m_relu_gate;
};

}  // namespace

std::unique_ptr<Layer> make_maxpool2d(const Pool2dGeometry& g, bool relu_gate) {
    return std::make_unique<MaxPool2D>(g, relu_gate);
}

}  // namespace cumnist::detail
