// Classifying prepared images with a trained model, over the same ops as training.
#include "cumnist/predict.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace cumnist {

std::vector<Prediction> predict(Model& model, const std::vector<uint8_t>& images, int n) {
    const int inputs = model.inputs(), classes = model.classes();
    if (n < 0 || images.size() != static_cast<std::size_t>(n) * inputs)
        throw Error(fmt::format("predict: {} bytes for {} images, the model expects {} pixels each", images.size(), n,
                                inputs));
    std::vector<Prediction> out;
    if (n == 0) return out;
    out.reserve(static_cast<std::size_t>(n));
    const Device dev = model.device();
    const int batch = std::min(n, 256);
    Workspace ws(model, batch);
    Buffer<uint8_t> pixels(static_cast<std::size_t>(batch) * inputs, dev);
    Buffer<float> x(static_cast<std::size_t>(batch) * inputs, dev);
    for (int first = 0; first < n; first += batch) {
        const int rows = std::min(batch, n - first);
        pixels.copy_from_host(images.data() + static_cast<std::size_t>(first) * inputs,
                              static_cast<std::size_t>(rows) * inputs);
        // x = pixels / 255, as the training batches are made.
        ops::u8_to_float(x.view(rows, inputs), pixels.view(rows, inputs));
        const MatrixView<float> logits = model.forward(ws, x.view(rows, inputs), false, 0, nullptr);
        // p = exp(z − max z) / Σ exp(z − max z), in place.
        ops::softmax(logits, logits);
        std::vector<float> p(static_cast<std::size_t>(rows) * classes);
        memory::copy(p.data(), Device::Cpu, logits.data, dev, p.size() * sizeof(float));
        for (int r = 0; r < rows; ++r) {
            const auto row = p.begin() + static_cast<std::ptrdiff_t>(r) * classes;
            if (!std::all_of(row, row + classes, [](float v) { return std::isfinite(v); }))
                throw Error(fmt::format("predict: the model's outputs for image {} are not finite (NaN or Inf): its "
                                        "parameters are too large or damaged",
                                        first + r + 1));
            Prediction pr;
            pr.probabilities.assign(p.begin() + static_cast<std::ptrdiff_t>(r) * classes,
                                    p.begin() + static_cast<std::ptrdiff_t>(r + 1) * classes);
            pr.ranking.resize(static_cast<std::size_t>(classes));
            std::iota(pr.ranking.begin(), pr.ranking.end(), 0);
            std::stable_sort(pr.ranking.begin(), pr.ranking.end(),
                             [&](int a, int b) { return pr.probabilities[a] > pr.probabilities[b]; });
            out.push_back(std::move(pr));
        }
    }
    return out;
}

}  // namespace cumnist
