// The CPU backend's convolutions through oneDNN: forward, backward-data and backward-weights
// primitives over activations in the geometry's layouts and OIHW weights, created once per
// geometry, direction and thread count and cached per calling thread. Builds against oneDNN 2.x
// (Debian 12) and 3.x.
#pragma once

#include "cumnist/ops.h"

namespace cumnist::cpu::onednn {

// y = conv(x, w) + bias; dx = backward-data(dy, w); dw = backward-weights(dy, x). Overwrite
// their outputs. Deterministic for a given thread count and instruction set.
// relu: max(y, 0) applied as an eltwise post-op of the forward primitive.
void conv_forward(float* y, const float* x, const float* w, const float* bias, const Conv2dGeometry& g, bool relu);
void conv_backward_data(float* dx, const float* dy, const float* w, const Conv2dGeometry& g);
void conv_backward_weights(float* dw, const float* dy, const float* x, const Conv2dGeometry& g);
// dw, db = backward-weights with the bias (dy, x) and, when dx is not null, dx = backward-data(dy,
// w): dy reordered once for both.
void conv_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                   const Conv2dGeometry& g);
// The layouts of x and y the forward primitive of g chooses (ops::conv2d_preferred_layouts).
ImageLayouts preferred_layouts(const Conv2dGeometry& g);

}  // namespace cumnist::cpu::onednn
