// The multilayer perceptron preset: its configuration (the --hidden, --activation and --dropout
// flags). An MlpConfig converts to the ModelSpec it stands for (cumnist/model.h):
//   dense{h1}, {act}, dropout{rate}, ..., dense{classes}
// so the MLP is one layered model like any other.
#pragma once

#include <string>
#include <vector>

#include "cumnist/ops.h"

namespace cumnist {

struct MlpConfig {
    int inputs = 784;
    std::vector<int> hidden = {512, 256};
    int classes = 10;
    Activation activation = Activation::Relu;
    float dropout = 0.2f;  // after every hidden layer, in training only

    int n_layers() const { return static_cast<int>(hidden.size()) + 1; }
    // "784-512-256-10 relu, dropout 0.2"
    std::string describe() const;
    void validate() const;  // throws Error naming the bad field
};

}  // namespace cumnist
