// MaxPool2D: the maximum of each window, its position kept for the backward pass (ops.h: the
// first maximum in window order, the same on every device).
#include "../layer.h"

namespace cumnist::detail {
namespace {

class MaxPool2D final : public Layer {
public:
    explicit MaxPool2D(const Pool2dGeometry& g) : m_g(g) {}

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
        ops::maxpool2d_backward(io.dx, io.dy, io.index, g);
    }

private:
    Pool2dGeometry m_g;
};

}  // namespace

std::unique_ptr<Layer> make_maxpool2d(const Pool2dGeometry& g) { return std::make_unique<MaxPool2D>(g); }

}  // namespace cumnist::detail
