// The element-wise layers that no Dense or Conv2D absorbed: a standalone activation (y = act(x))
// and a standalone dropout (y = x · keep/(1 − rate)), each into its own output.
#include "../layer.h"

namespace cumnist::detail {
namespace {

class ActivationLayer final : public Layer {
public:
    ActivationLayer(int size, Activation act) : m_size(size), m_act(act) {}
    int out_size() const override { return m_size; }
    void forward(const Pass&, const LayerIO& io) override { ops::act_dropout_forward(io.y, io.x, m_act, {}, nullptr); }
    void backward(const Pass&, const LayerIO& io) override {
        // act'(x) from the output y = act(x) (ops.h).
        if (io.dx.data != nullptr) ops::act_dropout_backward(io.dx, io.dy, io.y, m_act, {}, nullptr);
    }

private:
    int m_size;
    Activation m_act;
};

class DropoutLayer final : public Layer {
public:
    DropoutLayer(int size, DropoutSpec dropout) : m_size(size), m_dropout(dropout) {}
    int out_size() const override { return m_size; }
    void forward(const Pass& pass, const LayerIO& io) override {
        ops::act_dropout_forward(io.y, io.x, Activation::None, m_dropout.at(pass), pass.step);
    }
    void backward(const Pass& pass, const LayerIO& io) override {
        // The mask is redrawn from Philox at *step; `saved` is not read for Activation::None.
        if (io.dx.data != nullptr)
            ops::act_dropout_backward(io.dx, io.dy, io.y, Activation::None, m_dropout.at(pass), pass.step);
    }

private:
    int m_size;
    DropoutSpec m_dropout;
};

}  // namespace

std::unique_ptr<Layer> make_activation(int size, Activation act) { return std::make_unique<ActivationLayer>(size, act); }
std::unique_ptr<Layer> make_dropout(int size, DropoutSpec dropout) { return std::make_unique<DropoutLayer>(size, dropout); }

}  // namespace cumnist::detail
