// The training loop over ops.h, identical on every device.
#include "cumnist/trainer.h"


#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>

#include "core/cuda_host.h"
#include "cumnist/loader.h"

namespace cumnist {

namespace {

// Staging slots of the streaming path, on the host and in the device ring: the loader works up to
// this many batches ahead, and the copy of batch b + 1 overlaps step b.
constexpr int kStreamSlots = 3;

// The device memory a resident training set takes: pixels, labels and the int32 order.
std::size_t resident_bytes(const Dataset& train) {
    return train.images.size() + train.labels.size() + static_cast<std::size_t>(train.n) * sizeof(int32_t);
}

// Validates the configuration (before anything is allocated for it) and resolves Auto. On the GPU
// a data set is resident when it takes less than half of the free memory, which leaves the rest
// for the model, its workspace and whatever else shares the GPU.
DataPlacement resolve_placement(const TrainConfig& config, const Dataset& train) {
    config.validate(train.n);
    if (config.placement != DataPlacement::Auto) return config.placement;
    if (config.device == Device::Cpu) return DataPlacement::Resident;
    const cuda::MemoryInfo memory = cuda::memory_info();
    return static_cast<double>(resident_bytes(train)) < 0.5 * static_cast<double>(memory.free_bytes)
               ? DataPlacement::Resident
               : DataPlacement::Stream;
}

}  // namespace

const char* to_string(DataPlacement placement) {
    switch (placement) {
    case DataPlacement::Auto: return "auto";
    case DataPlacement::Resident: return "resident";
    case DataPlacement::Stream: return "stream";
    }
    return "?";
}

DataPlacement parse_data_placement(const std::string& name) {
    if (name == "auto") return DataPlacement::Auto;
    if (name == "resident") return DataPlacement::Resident;
    if (name == "stream") return DataPlacement::Stream;
    throw Error(fmt::format("--data-placement: unknown placement '{}' (expected auto, resident or stream)", name));
}

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

// The streaming path. The device holds a ring of kStreamSlots batches (uint8 pixels and labels)
// instead of the data set; batch b of an epoch is copied into ring slot b mod kStreamSlots. The
// step is unchanged: its gather_batch reads `order` at positions b·batch + r (r < rows ≤ batch),
// and order[i] = i mod (kStreamSlots·batch) is exactly ring row (b mod kStreamSlots)·batch + r
// there, because b·batch + r = ⌊b / kStreamSlots⌋·kStreamSlots·batch + (b mod kStreamSlots)·batch
// + r with the last two terms < kStreamSlots·batch. That holds for every b, for the short last
// batch, and for an epoch resumed at any step, so `order` is uploaded once and the captured graph
// stays valid. (It costs 4 bytes of device memory per training sample.)
//
// On the GPU the copies run on a copy stream ordered by events (cuda::CopyStream): the copy into
// ring slot k waits for the step that last read it, the step waits for its copy, and the loader
// refills its pinned slot k only once the copy out of it has finished (the loader's fence). The
// host never waits for the compute stream inside an epoch. On the CPU the copy is a memcpy.
struct Trainer::Streamed {
    Streamed(const Dataset& train, int batch_size, Device dev)
        : images(static_cast<std::size_t>(kStreamSlots) * batch_size * train.features(), dev),
          labels(static_cast<std::size_t>(kStreamSlots) * batch_size, dev),
          order(static_cast<std::size_t>(train.n), dev),
          copies(dev == Device::Cuda ? std::make_unique<cuda::CopyStream>(kStreamSlots) : nullptr),
          loader(train, batch_size, kStreamSlots, dev,
                 dev == Device::Cuda ? BatchLoader::SlotFence([this](int k) { copies->wait_copied(k); })
                                     : BatchLoader::SlotFence()) {
        const int ring_rows = kStreamSlots * batch_size;
        std::vector<int32_t> ring_order(static_cast<std::size_t>(train.n));
        for (int i = 0; i < train.n; ++i) ring_order[i] = i % ring_rows;
        order.copy_from_host(ring_order.data(), ring_order.size());
    }
    ~Streamed() {
        // Idle the loader thread first (its fence uses `copies`), then let `copies` wait for the
        // copies still reading the loader's pinned slots, and only then free those slots.
        try {
            loader.stop();
        } catch (...) {
        }
        copies.reset();
    }
    Streamed(const Streamed&) = delete;
    Streamed& operator=(const Streamed&) = delete;

    Buffer<uint8_t> images, labels;  // the device ring: kStreamSlots × batch rows
    Buffer<int32_t> order;           // n entries: i mod (kStreamSlots · batch)
    std::unique_ptr<cuda::CopyStream> copies;  // CUDA only; before `loader`, whose fence uses it
    BatchLoader loader;
    bool bench_loading = false;        // the loader is positioned for train_steps()
    int slot = 0;                      // the ring slot of the staged batch
};

Trainer::Trainer(const ModelSpec& model, const OptimizerConfig& optimizer, const TrainConfig& config,
                 const Dataset& train)
    : m_config(config),
      m_placement(resolve_placement(config, train)),
      m_n(train.n),
      m_features(train.features()),
      m_model(model, config.device),
      m_optimizer(optimizer, parameter_count(model), config.device),
      m_ws(m_model, std::max(config.batch, config.eval_batch)),
      m_x(static_cast<std::size_t>(std::max(config.batch, config.eval_batch)) * model.inputs(), config.device),
      m_y(static_cast<std::size_t>(std::max(config.batch, config.eval_batch)), config.device),
      m_counters(3, config.device),
      m_totals(2, config.device),
      m_eval_index(1, config.device),
      m_eval_totals(2, config.device),
      m_graph(std::make_unique<Graph>()) {
    m_config.placement = m_placement;
    if (train.features() != model.inputs())
        throw Error(fmt::format("{}: images have {} pixels, the model expects {}", train.name, train.features(),
                                model.inputs()));
    if (m_placement == DataPlacement::Resident)
        m_resident = std::make_unique<ResidentData>(train, config.device);
    else
        m_streamed = std::make_unique<Streamed>(train, config.batch, config.device);
    const std::vector<float> init = glorot_uniform_init(model, config.seed);
    m_model.parameters().copy_from_host(init.data(), init.size());
    m_counters.zero();
    m_totals.zero();  // train_steps() before any epoch sums from zero
    m_eval_totals.zero();
}

Trainer::~Trainer() {
    // The members free device memory next: wait for the work still queued on the stream that uses
    // it rather than rely on cudaFree doing so. An error here (a poisoned context) was or will be
    // reported by the call that caused it; a destructor must not throw it.
    if (m_config.device == Device::Cuda) {
        try {
            cuda::synchronize();
        } catch (...) {
        }
    }
}

int Trainer::steps_per_epoch() const { return (m_n + m_config.batch - 1) / m_config.batch; }

uint64_t Trainer::step() const { return m_counters.to_host()[0]; }

void Trainer::set_step(uint64_t step) { m_counters.copy_from_host(&step, 1, 0); }

std::size_t Trainer::graph_nodes() const { return m_graph->step.ready() ? m_graph->step.node_count() : 0; }

void Trainer::run_step(int rows) {
    const Device dev = m_config.device;
    // This trainer's GEMM math (TF32 or FP32) for the step's GEMMs, and the previous mode after.
    std::optional<cuda::MathModeScope> math;
    if (dev == Device::Cuda) math.emplace(m_config.tf32);
    const uint64_t* step = m_counters.data();
    uint64_t* batch_index = m_counters.data() + 1;
    MatrixView<float> x = m_x.view(rows, m_model.inputs());
    MatrixView<uint8_t> y = m_y.view(1, rows);
    if (m_resident) {
        ResidentData& d = *m_resident;
        ops::gather_batch(x, y, d.images.view(d.n, d.features), d.labels.view(1, d.n), d.order.view(1, d.n),
                          batch_index, m_config.batch);
    } else {
        Streamed& s = *m_streamed;
        const int ring_rows = kStreamSlots * m_config.batch;
        ops::gather_batch(x, y, s.images.view(ring_rows, m_features), s.labels.view(1, ring_rows),
                          s.order.view(1, m_n), batch_index, m_config.batch);
    }
    // The output layer's bias add and bias gradient, when it ends in a plain bias (every preset),
    // are done by the loss op, and its dx GEMM by the layer before it (StepFolds): on the GPU three
    // kernels fewer (that dx then in FP32 even with TF32), the same bits on the CPU.
    const Model::StepFolds folds = m_model.step_folds();
    const MatrixView<float> logits = m_model.forward(m_ws, x, true, m_config.seed, step, folds);
    // The loss is the batch mean: its 1/rows is applied here, in the gradient, and nowhere else.
    MatrixView<float> dlogits = m_ws.dlogits(rows);
    MatrixView<float> row_loss = m_ws.row_loss.view(1, rows), row_correct = m_ws.row_correct.view(1, rows);
    const float grad_scale = 1.0f / static_cast<float>(rows);
    if (folds.output_bias)
        ops::bias_softmax_xent(dlogits, m_model.output_bias(m_model.gradients()), row_loss, row_correct, logits,
                               m_model.output_bias(m_model.parameters()), y, grad_scale, m_totals.data());
    else
        ops::softmax_xent(dlogits, row_loss, row_correct, logits, y, grad_scale, m_totals.data());
    m_model.backward(m_ws, x, true, m_config.seed, step, folds);
    // The update also ends the step: it advances the step counter and the batch index (m_counters
    // is {step, batch index, 0}), in its own kernel on the GPU.
    m_optimizer.step(m_model.parameters(), m_model.gradients(), step, m_counters.data());
}

void Trainer::full_batch_step() {
    const bool graph = m_config.device == Device::Cuda && m_config.use_graph && m_graph_failure.empty();
    if (graph && m_graph->step.ready()) {
        m_graph->step.launch();
        return;
    }
    run_step(m_config.batch);
    if (!graph) return;
    // After one plain (warm-up) step, capture the full-batch step once. Captured work does not run,
    // so a failed capture leaves exactly the plain step done: the run goes on with plain launches
    // (the same ops) instead of re-capturing at every step, and graph_failure() says why.
    try {
        m_graph->step.capture([&] { run_step(m_config.batch); });
    } catch (const Error& e) {
        m_graph_failure = e.what();
    }
}

void Trainer::stage_batch(int b) {
    Streamed& s = *m_streamed;
    const BatchLoader::Batch batch = s.loader.next();
    CUMNIST_CHECK(batch.index == b && batch.slot == b % kStreamSlots, "the loader delivered batch {} (slot {}) for step {}",
                  batch.index, batch.slot, b);
    const std::size_t row0 = static_cast<std::size_t>(batch.slot) * static_cast<std::size_t>(m_config.batch);
    uint8_t* images = s.images.data() + row0 * static_cast<std::size_t>(m_features);
    uint8_t* labels = s.labels.data() + row0;
    const std::size_t image_bytes = static_cast<std::size_t>(batch.rows) * static_cast<std::size_t>(m_features);
    const std::size_t label_bytes = static_cast<std::size_t>(batch.rows);
    if (s.copies) {
        s.copies->upload(batch.slot, {{images, batch.images, image_bytes}, {labels, batch.labels, label_bytes}});
        s.copies->wait_ready(batch.slot);
    } else {
        std::memcpy(images, batch.images, image_bytes);
        std::memcpy(labels, batch.labels, label_bytes);
    }
    // On the GPU the copy may still be reading the pinned slot: the loader's fence waits for it
    // before refilling, so the slot can be handed back now.
    s.loader.release(batch);
    s.slot = batch.slot;
}

void Trainer::finish_batch() {
    if (m_streamed && m_streamed->copies) m_streamed->copies->mark_consumed(m_streamed->slot);
}

void Trainer::train_steps(int n) {
    const int full_batches = m_n / m_config.batch;
    for (int i = 0; i < n; ++i) {
        if (m_bench_batch >= full_batches) {
            const uint64_t zero = 0;
            m_counters.copy_from_host(&zero, 1, 1);
            m_bench_batch = 0;
            if (m_streamed) m_streamed->bench_loading = false;
        }
        if (m_streamed) {
            Streamed& s = *m_streamed;
            // The current epoch's order again (the identity before the first epoch, as Resident).
            if (!s.bench_loading) s.loader.restart(m_bench_batch, full_batches);
            s.bench_loading = true;
            stage_batch(m_bench_batch);
        }
        full_batch_step();
        finish_batch();
        ++m_bench_batch;
    }
}

void Trainer::set_lr_scale(float scale) {
    if (scale == m_optimizer.lr_scale()) return;  // unchanged (a constant schedule): no wait, no copy
    synchronize();
    m_optimizer.set_lr_scale(scale);
}

void Trainer::synchronize() {
    if (m_config.device == Device::Cuda) cuda::synchronize();
}

EpochMetrics Trainer::train_epoch(int epoch, const ResidentData* test, const ProgressFn& progress, int first_step) {
    using Clock = std::chrono::steady_clock;
    const Device dev = m_config.device;
    const int n = m_n, batch = m_config.batch;
    const int full_batches = n / batch, n_steps = steps_per_epoch();
    if (first_step < 0 || first_step >= n_steps)
        throw Error(fmt::format("epoch {} has {} steps; cannot start at step {}", epoch, n_steps, first_step));

    const auto t0 = Clock::now();
    // Epoch set-up, outside the step: the order, the batch index and the metric totals.
    const std::vector<int32_t> order = epoch_order(n, m_config.seed, static_cast<uint64_t>(epoch - 1));
    if (m_resident) {
        m_resident->order.copy_from_host(order.data(), order.size());
    } else {
        m_streamed->loader.start(order, first_step, n_steps);
        m_streamed->bench_loading = false;
    }
    const uint64_t start = static_cast<uint64_t>(first_step);
    m_counters.copy_from_host(&start, 1, 1);
    m_totals.zero();

    int b = first_step;
    bool stopped = false;
    for (; b < n_steps && !stopped; ++b) {
        if (m_streamed) stage_batch(b);
        if (b < full_batches)
            full_batch_step();
        else
            run_step(n - full_batches * batch);  // the short last batch: plain launches
        finish_batch();
        if (progress) {
            const bool readable = dev == Device::Cpu;
            const double seen = static_cast<double>(std::min(n, (b + 1) * batch) - first_step * batch);
            progress(b + 1, n_steps, readable ? m_totals.data()[0] / seen : std::nan(""),
                     readable ? m_totals.data()[1] / seen : std::nan(""));
        }
        stopped = m_stop != nullptr && m_stop->load(std::memory_order_acquire);
    }
    // The device's batch index is now b: train_steps() continues from there (or wraps).
    m_bench_batch = b;
    if (m_streamed) m_streamed->loader.stop();  // after a stop request, no batch is left loading
    const std::vector<double> totals = m_totals.to_host();  // the epoch's one read-back (synchronises)
    const auto t1 = Clock::now();

    EpochMetrics m;
    m.epoch = epoch;
    m.steps = b - first_step;
    m.first_step = first_step;
    m.completed = b == n_steps;
    const double samples = static_cast<double>(std::min(n, b * batch) - first_step * batch);
    m.train_loss = totals[0] / samples;
    m.train_accuracy = totals[1] / samples;
    m.seconds = std::chrono::duration<double>(t1 - t0).count();
    m.samples_per_second = samples / m.seconds;
    if (!std::isfinite(m.train_loss))
        throw Error(fmt::format("training diverged in epoch {}: the loss is {}; try a lower learning rate (--lr)", epoch,
                                std::isnan(m.train_loss) ? std::string("NaN") : fmt::format("{}", m.train_loss)));
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
    std::optional<cuda::MathModeScope> math;  // this trainer's GEMM math, as in run_step
    if (dev == Device::Cuda) math.emplace(m_config.tf32);
    CUMNIST_CHECK(data.images.device() == dev, "evaluation data on {}, model on {}", to_string(data.images.device()),
                  to_string(dev));
    if (data.features != m_model.inputs())
        throw Error(fmt::format("evaluation images have {} pixels, the model expects {}", data.features,
                                m_model.inputs()));
    const int eval_batch = m_ws.max_batch;
    Buffer<uint64_t>& batch_index = m_eval_index;
    Buffer<double>& totals = m_eval_totals;
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
        ops::softmax_xent({}, row_loss, row_correct, logits, y, 1.0f, totals.data());
        ops::increment(batch_index.data(), dev);
    }
    const std::vector<double> t = totals.to_host();
    return {t[0] / data.n, t[1] / data.n, data.n};
}

}  // namespace cumnist
