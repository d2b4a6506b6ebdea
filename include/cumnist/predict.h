// Classifying prepared images with a trained model: softmax probabilities per image and the
// classes ranked by them (what `cumnist predict` prints). Forward pass only, no dropout.
#pragma once

#include <cstdint>
#include <vector>

#include "cumnist/model.h"

namespace cumnist {

struct Prediction {
    std::vector<float> probabilities;  // per class, softmax of the logits; sums to 1
    std::vector<int> ranking;          // classes by decreasing probability (lower class first on ties)
    int top() const { return ranking.front(); }
};

// Applies `model` to `n` images of model.config().inputs bytes each (0..255, scaled by 1/255 as in
// training), in batches on the model's device. Throws Error when the sizes disagree.
std::vector<Prediction> predict(Model& model, const std::vector<uint8_t>& images, int n);

}  // namespace cumnist
