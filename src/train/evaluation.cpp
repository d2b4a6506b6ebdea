// Whole-data-set evaluation with per-sample predictions, over the same ops as training.
#include "cumnist/evaluation.h"

#include <cmath>
#include <cstring>
#include <string>

#include "cumnist/error.h"
#include "cumnist/trainer.h"

namespace cumnist {

int64_t ClassificationReport::n_true(int truth) const {
    int64_t total = 0;
    for (int p = 0; p < classes; ++p) total += count(truth, p);
    return total;
}

double ClassificationReport::class_accuracy(int truth) const {
    const int64_t total = n_true(truth);
    return total > 0 ? static_cast<double>(count(truth, truth)) / static_cast<double>(total) : std::nan("");
}

ClassificationReport evaluate_classifier(Model& model, const Dataset& data, int eval_batch) {
    const Device dev = model.device();
    if (eval_batch <= 0) throw Error(fmt::format("evaluation batch must be at least 1, got {}", eval_batch));
    if (data.features() != model.inputs())
        throw Error(fmt::format("{}: images have {} pixels ({}x{}), the model expects {}", data.name, data.features(),
                                data.rows, data.cols, model.inputs()));
    for (int i = 0; i < data.n; ++i)
        if (data.labels[i] >= model.classes())
            throw Error(fmt::format("{}: sample {} has label {}, but the model has only {} classes", data.name, i,
                                    data.labels[i], model.classes()));
    const int classes = model.classes();
    ClassificationReport r;
    r.n = data.n;
    r.classes = classes;
    r.predictions.resize(static_cast<std::size_t>(data.n));
    r.confusion.assign(static_cast<std::size_t>(classes) * classes, 0);
    r.logits.resize(static_cast<std::size_t>(data.n) * classes);
    if (data.n == 0) return r;

    const int batch = std::min(eval_batch, data.n);
    const ResidentData resident(data, dev);
    Workspace ws(model, batch);
    Buffer<float> x(static_cast<std::size_t>(batch) * model.inputs(), dev);
    Buffer<uint8_t> y(static_cast<std::size_t>(batch), dev);
    Buffer<uint64_t> batch_index(1, dev);
    batch_index.zero();
    std::vector<float> loss_host(static_cast<std::size_t>(batch));
    double loss_sum = 0.0;
    int64_t correct = 0;
    for (int first = 0; first < data.n; first += batch) {
        const int rows = std::min(batch, data.n - first);
        MatrixView<float> xv = x.view(rows, model.inputs());
        MatrixView<uint8_t> yv = y.view(1, rows);
        // resident.order is the identity: batch b holds samples [b·batch, b·batch + rows).
        ops::gather_batch(xv, yv, resident.images.view(data.n, resident.features), resident.labels.view(1, data.n),
                          resident.order.view(1, data.n), batch_index.data(), batch);
        const MatrixView<float> logits = model.forward(ws, xv, false, 0, nullptr);
        MatrixView<float> row_loss = ws.row_loss.view(1, rows), row_correct = ws.row_correct.view(1, rows);
        ops::softmax_xent({}, row_loss, row_correct, logits, yv, 1.0f);
        ops::increment(batch_index.data(), dev);
        float* const logits_host = r.logits.data() + static_cast<std::size_t>(first) * classes;
        memory::copy(logits_host, Device::Cpu, logits.data, dev, logits.size() * sizeof(float));
        memory::copy(loss_host.data(), Device::Cpu, row_loss.data, dev, row_loss.size() * sizeof(float));
        for (int r_ = 0; r_ < rows; ++r_) {
            const float* z = logits_host + static_cast<std::size_t>(r_) * classes;
            int best = 0;
            for (int c = 1; c < classes; ++c)
                if (z[c] > z[best]) best = c;  // the first maximum on ties, as softmax_xent counts it
            const int i = first + r_;
            const int label = data.labels[i];
            r.predictions[i] = best;
            ++r.confusion[static_cast<std::size_t>(label) * classes + best];
            correct += best == label;
            loss_sum += loss_host[r_];
        }
    }
    r.loss = loss_sum / data.n;
    r.accuracy = static_cast<double>(correct) / data.n;
    if (!std::isfinite(r.loss))
        throw Error(fmt::format("{}: the loss is {}; the model's parameters hold NaN or Inf", data.name,
                                std::isnan(r.loss) ? std::string("NaN") : fmt::format("{}", r.loss)));
    return r;
}

std::string npy_bytes(const std::vector<float>& values, int rows, int cols) {
    CUMNIST_CHECK(values.size() == static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols),
                  "npy of {} values as {} x {}", values.size(), rows, cols);
    std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", rows, cols);
    // The magic, the version, a 2-byte length, then the header padded with spaces to a multiple of
    // 64 bytes in all and ended by a newline.
    const std::size_t total = (10 + header.size() + 1 + 63) / 64 * 64;
    header.append(total - 10 - header.size() - 1, ' ');
    header += '\n';
    std::string out("\x93NUMPY\x01\x00", 8);
    out += static_cast<char>(header.size() & 0xff);
    out += static_cast<char>(header.size() >> 8);
    out += header;
    out.reserve(out.size() + values.size() * 4);
    for (float v : values) {
        uint32_t bits = 0;
        std::memcpy(&bits, &v, 4);
        for (int b = 0; b < 4; ++b) out += static_cast<char>((bits >> (8 * b)) & 0xffu);
    }
    return out;
}

}  // namespace cumnist
