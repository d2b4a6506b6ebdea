// The training loop over ops.h, identical on every device.
#include "cumnist/trainer.h"


#include <chrono>
#include <cmath>

#include "cuda_host.h"

namespace cumnist {

void TrainConfig::validate(int n_train) const {
    if (epochs <= 0) throw Error(fmt::format("--epochs must be at least 1, got {}", epochs));
    if (batch <= 0) throw Error(fmt::format("--batch-size must be at least 1, got {}", batch));
    if (batch > n_train)
        throw Error(fmt::format("--batch-size {} is larger than the training set ({} samples)", batch, n_train));
    if (eval_batch <= 0) throw Error(fmt::format("evaluation batch must be at least 1, got {}", eval_batch));
}

ResidentData::ResidentData(const Dataset& ds, Device device)
    : n(ds.n),
      features(ds.features()),
      images(Buffer<uint8_t>::from_host(ds.images, device)),
      labels(Buffer<uint8_t>::from_host(ds.labels, device)),
      order(n, device) {
    std::vector<int32_t> identity(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) identity[i] = i;
    order.copy_from_host(identity.data(), identity.size());
}

struct Trainer::Graph {
    cuda::StepGraph step;
};

Trainer::Trainer(const MlpConfig& model, const OptimizerConfig& optimizer, const TrainConfig& config,
                 const Dataset& train)
    : m_config(config),
      m_model(model, config.device),
      m_optimizer(optimizer, parameter_count(model), config.device),
      m_train(train, config.device),
      m_ws(model, std::max(config.batch, config.eval_batch), config.device),
      m_x(static_cast<std::size_t>(std::max(config.batch, config.eval_batch)) * model.inputs, config.device),
      m_y(static_cast<std::size_t>(std::max(config.batch, config.eval_batch)), config.device),
      m_counters(2, config.device),
      m_totals(2, config.device),
      m_graph(std::make_unique<Graph>()) {
    m_config.validate(train.n);
    if (train.features() != model.inputs)
        throw Error(fmt::format("{}: images have {} pixels, the model expects {}", train.name, train.features(),
                                model.inputs));
    if (config.device == Device::Cuda) cuda::set_tf32(config.tf32);
    const std::vector<float> init = glorot_uniform_init(model, config.seed);
    m_model.parameters().copy_from_host(init.data(), init.size());
    m_counters.zero();
}

Trainer::~Trainer() = default;

int Trainer::steps_per_epoch() const { return (m_train.n + m_config.batch - 1) / m_config.batch; }

uint64_t Trainer::step() const { return m_counters.to_host()[0]; }

void Trainer::set_step(uint64_t step) { m_counters.copy_from_host(&step, 1, 0); }

std::size_t Trainer::graph_nodes() const { return m_graph->step.ready() ? m_graph->step.node_count() : 0; }

void Trainer::run_step(int rows) {
    const Device dev = m_config.device;
    const uint64_t* step = m_counters.data();
    uint64_t* batch_index = m_counters.data() + 1;
    MatrixView<float> x = m_x.view(rows, m_model.config().inputs);
    MatrixView<uint8_t> y = m_y.view(1, rows);
    ops::gather_batch(x, y, m_train.images.view(m_train.n, m_train.features), m_train.labels.view(1, m_train.n),
                      m_train.order.view(1, m_train.n), batch_index, m_config.batch);
    const MatrixView<float> logits = m_model.forward(m_ws, x, true, m_config.seed, step);
    // The loss is the batch mean: its 1/rows is applied here, in the gradient, and nowhere else.
    MatrixView<float> dlogits = m_ws.dh.back().view(rows, m_model.config().classes);
    MatrixView<float> row_loss = m_ws.row_loss.view(1, rows), row_correct = m_ws.row_correct.view(1, rows);
    ops::softmax_xent(dlogits, row_loss, row_correct, logits, y, 1.0f / static_cast<float>(rows));
    ops::accumulate_metrics(m_totals.data(), row_loss, row_correct);
    m_model.backward(m_ws, x, true, m_config.seed, step);
    m_optimizer.step(m_model.parameters(), m_model.gradients(), step);
    ops::increment(m_counters.data(), dev);
    ops::increment(batch_index, dev);
}

void Trainer::full_batch_step() {
    const bool graph = m_config.device == Device::Cuda && m_config.use_graph;
    if (graph && m_graph->step.ready()) {
        m_graph->step.launch();
        return;
    }
    run_step(m_config.batch);
    // After one plain (warm-up) step, capture the full-batch step once.
    if (graph) m_graph->step.capture([&] { run_step(m_config.batch); });
}

void Trainer::train_steps(int n) {
    const int full_batches = m_train.n / m_config.batch;
    for (int i = 0; i < n; ++i) {
        if (m_bench_batch >= full_batches) {
            const uint64_t zero = 0;
            m_counters.copy_from_host(&zero, 1, 1);
            m_bench_batch = 0;
        }
        full_batch_step();
        ++m_bench_batch;
    }
}

void Trainer::synchronize() {
    if (m_config.device == Device::Cuda) cuda::synchronize();
}

EpochMetrics Trainer::train_epoch(int epoch, const ResidentData* test, const ProgressFn& progress, int first_step) {
    using Clock = std::chrono::steady_clock;
    const Device dev = m_config.device;
    const int n = m_train.n, batch = m_config.batch;
    const int full_batches = n / batch, n_steps = steps_per_epoch();
    if (first_step < 0 || first_step >= n_steps)
        throw Error(fmt::format("epoch {} has {} steps; cannot start at step {}", epoch, n_steps, first_step));

    const auto t0 = Clock::now();
    // Epoch set-up, outside the step: the order, the batch index and the metric totals.
    const std::vector<int32_t> order = epoch_order(n, m_config.seed, static_cast<uint64_t>(epoch - 1));
    m_train.order.copy_from_host(order.data(), order.size());
    const uint64_t start = static_cast<uint64_t>(first_step);
    m_counters.copy_from_host(&start, 1, 1);
    m_totals.zero();

    m_bench_batch = first_step;
    int b = first_step;
    bool stopped = false;
    for (; b < n_steps && !stopped; ++b) {
        if (b < full_batches)
            full_batch_step();
        else
            run_step(n - full_batches * batch);  // the short last batch: plain launches
        if (progress) {
            const bool readable = dev == Device::Cpu;
            const double seen = static_cast<double>(std::min(n, (b + 1) * batch) - first_step * batch);
            progress(b + 1, n_steps, readable ? m_totals.data()[0] / seen : std::nan(""),
                     readable ? m_totals.data()[1] / seen : std::nan(""));
        }
        stopped = m_stop != nullptr && m_stop->load(std::memory_order_relaxed);
    }
    const std::vector<double> totals = m_totals.to_host();  // the epoch's one read-back (synchronises)
    const auto t1 = Clock::now();

    EpochMetrics m;
    m.epoch = epoch;
    m.steps = b - first_step;
    m.completed = b == n_steps;
    const double samples = static_cast<double>(std::min(n, b * batch) - first_step * batch);
    m.train_loss = totals[0] / samples;
    m.train_accuracy = totals[1] / samples;
    m.seconds = std::chrono::duration<double>(t1 - t0).count();
    m.samples_per_second = samples / m.seconds;
    if (!std::isfinite(m.train_loss))
        throw Error(fmt::format("training diverged in epoch {}: the loss is {}; try a lower learning rate (--lr)", epoch,
                                m.train_loss));
    if (test && m.completed) {
        const Evaluation e = evaluate(*test);
        m.test_loss = e.loss;
        m.test_accuracy = e.accuracy;
        m.eval_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
    }
    return m;
}

Evaluation Trainer::evaluate(const ResidentData& data) {
    const Device dev = m_config.device;
    CUMNIST_CHECK(data.images.device() == dev, "evaluation data on {}, model on {}", to_string(data.images.device()),
                  to_string(dev));
    if (data.features != m_model.config().inputs)
        throw Error(fmt::format("evaluation images have {} pixels, the model expects {}", data.features,
                                m_model.config().inputs));
    const int eval_batch = m_ws.max_batch;
    Buffer<uint64_t> batch_index(1, dev);
    Buffer<double> totals(2, dev);
    batch_index.zero();
    totals.zero();
    for (int first = 0; first < data.n; first += eval_batch) {
        const int rows = std::min(eval_batch, data.n - first);
        MatrixView<float> x = m_x.view(rows, data.features);
        MatrixView<uint8_t> y = m_y.view(1, rows);
        ops::gather_batch(x, y, data.images.view(data.n, data.features), data.labels.view(1, data.n),
                          data.order.view(1, data.n), batch_index.data(), eval_batch);
        const MatrixView<float> logits = m_model.forward(m_ws, x, false, m_config.seed, nullptr);
        MatrixView<float> row_loss = m_ws.row_loss.view(1, rows), row_correct = m_ws.row_correct.view(1, rows);
        ops::softmax_xent({}, row_loss, row_correct, logits, y, 1.0f);
        ops::accumulate_metrics(totals.data(), row_loss, row_correct);
        ops::increment(batch_index.data(), dev);
    }
    const std::vector<double> t = totals.to_host();
    return {t[0] / data.n, t[1] / data.n, data.n};
}

}  // namespace cumnist
