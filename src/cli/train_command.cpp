// `cumnist train`: trains an MLP, printing Keras-style per-epoch lines (with a live progress
// bar on a terminal), and evaluates on the test set after every epoch.
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "cumnist/data.h"
#include "cumnist/trainer.h"

namespace cumnist::cli {
namespace {

struct TrainOptions {
    std::string data_dir = default_data_dir();
    std::string dataset = "mnist";
    std::string device = "auto";
    std::string optimizer = "adam";
    std::string activation = "relu";
    std::string hidden = "512,256";
    std::string metrics_out;
    int threads = 0;
    float lr = 1e-3f;
    float momentum = 0.0f;
    bool no_graph = false;
    bool tf32 = false;
    TrainConfig train;
    MlpConfig model;
};

// Keras-style live progress line, redrawn in place; only on a terminal.
class ProgressBar {
public:
    explicit ProgressBar(bool enabled) : m_enabled(enabled) {}
    void start() { m_t0 = std::chrono::steady_clock::now(); m_last = -1.0; }
    void update(int step, int n_steps, double loss, double accuracy) {
        if (!m_enabled) return;
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - m_t0).count();
        if (step != n_steps && elapsed - m_last < 0.1) return;  // redraw at most 10 times a second
        m_last = elapsed;
        constexpr int kWidth = 30;
        const int filled = static_cast<int>(static_cast<long>(kWidth) * step / n_steps);
        std::string bar(static_cast<std::size_t>(filled), '=');
        if (filled < kWidth) bar += '>' + std::string(static_cast<std::size_t>(kWidth - filled - 1), '.');
        const double eta = elapsed / step * (n_steps - step);
        std::string line = fmt::format("\r{:>{}}/{} [{}] - ETA: {}", step, digits(n_steps), n_steps, bar,
                                       format_duration(eta));
        if (!std::isnan(loss)) line += fmt::format(" - loss: {:.4f} - accuracy: {:.4f}", loss, accuracy);
        fmt::print("{}\x1b[K", line);
        std::fflush(stdout);
    }
    void finish() {
        if (m_enabled) fmt::print("\r\x1b[K");
    }

private:
    static int digits(int n) { return static_cast<int>(std::to_string(n).size()); }
    bool m_enabled;
    std::chrono::steady_clock::time_point m_t0;
    double m_last = -1.0;
};

nlohmann::json to_json(const EpochMetrics& m) {
    return {{"epoch", m.epoch},         {"train_loss", m.train_loss},
            {"train_accuracy", m.train_accuracy}, {"test_loss", m.test_loss},
            {"test_accuracy", m.test_accuracy},   {"seconds", m.seconds},
            {"eval_seconds", m.eval_seconds},     {"samples_per_second", m.samples_per_second}};
}

int run_train(TrainOptions& o) {
    o.model.hidden = parse_hidden(o.hidden);
    o.model.activation = parse_activation(o.activation);
    o.model.validate();
    OptimizerConfig opt;
    opt.kind = parse_optimizer(o.optimizer);
    opt.lr = o.lr;
    opt.momentum = o.momentum;
    opt.validate();
    o.train.use_graph = !o.no_graph;
    o.train.tf32 = o.tf32;
    if (o.train.epochs <= 0) throw Error(fmt::format("--epochs must be at least 1, got {}", o.train.epochs));
    if (o.train.batch <= 0) throw Error(fmt::format("--batch-size must be at least 1, got {}", o.train.batch));
    set_threads(o.threads);
    o.train.device = choose_device(o.device);

    const Dataset train = load_dataset(o.data_dir, o.dataset, Split::Train);
    const Dataset test = load_dataset(o.data_dir, o.dataset, Split::Test);
    o.model.inputs = train.features();
    if (test.features() != train.features())
        throw Error(fmt::format("test images are {}x{}, training images {}x{}", test.rows, test.cols, train.rows,
                                train.cols));

    const bool gpu = o.train.device == Device::Cuda;
    fmt::print("cumnist: training on {} ({})\n", gpu ? "the GPU" : "the CPU",
               gpu ? device_name(Device::Cuda) : fmt::format("{}, {} threads", device_name(Device::Cpu), omp_get_max_threads()));
    fmt::print("  model      {} ({} parameters)\n", o.model.describe(), parameter_count(o.model));
    fmt::print("  optimizer  {}\n", opt.describe());
    fmt::print("  data       {}: {} training, {} test images of {}x{} from {}/{}\n", o.dataset, train.n, test.n,
               train.rows, train.cols, o.data_dir, o.dataset);
    fmt::print("  schedule   {} epochs of {} steps (batch {}), seed {}{}\n", o.train.epochs,
               (train.n + o.train.batch - 1) / o.train.batch, o.train.batch, o.train.seed,
               gpu ? fmt::format(", {}{}", o.train.use_graph ? "CUDA Graph" : "no graph", o.train.tf32 ? ", TF32" : ", FP32")
                   : "");

    Trainer trainer(o.model, opt, o.train, train);
    const ResidentData test_data(test, o.train.device);
    ProgressBar bar(::isatty(STDOUT_FILENO) != 0);
    nlohmann::json history = nlohmann::json::array();
    std::string metrics_text;
    double best = -1.0, total_seconds = 0.0;
    int best_epoch = 0;
    for (int epoch = 1; epoch <= o.train.epochs; ++epoch) {
        fmt::print("Epoch {}/{}\n", epoch, o.train.epochs);
        std::fflush(stdout);
        bar.start();
        const EpochMetrics m = trainer.train_epoch(epoch, &test_data, [&](int s, int n, double loss, double acc) {
            bar.update(s, n, loss, acc);
        });
        bar.finish();
        const int steps = trainer.steps_per_epoch();
        fmt::print("{}/{} [==============================] - {} {:.0f}us/step - loss: {:.4f} - accuracy: {:.4f} - "
                   "val_loss: {:.4f} - val_accuracy: {:.4f} - {:.0f} samples/s\n",
                   steps, steps, format_duration(m.seconds), m.seconds / steps * 1e6, m.train_loss, m.train_accuracy,
                   m.test_loss, m.test_accuracy, m.samples_per_second);
        std::fflush(stdout);
        total_seconds += m.seconds + m.eval_seconds;
        if (m.test_accuracy > best) best = m.test_accuracy, best_epoch = epoch;
        if (!o.metrics_out.empty()) {
            metrics_text += to_json(m).dump() + "\n";
            write_file_atomically(o.metrics_out, metrics_text);
        }
    }
    fmt::print("Done: {} epochs in {}; best test accuracy {:.4f} (epoch {})\n", o.train.epochs,
               format_duration(total_seconds), best, best_epoch);
    if (gpu && trainer.graph_nodes() > 0) fmt::print("CUDA Graph: {} nodes per training step\n", trainer.graph_nodes());
    return 0;
}

}  // namespace

void add_train_command(CLI::App& parent, std::vector<Command>& commands) {
    auto o = std::make_shared<TrainOptions>();
    CLI::App* train = parent.add_subcommand("train", "Train an MLP and evaluate it on the test set after every epoch");
    train->add_option("--data", o->data_dir, "Data folder holding <dataset>/ with the IDX files")->capture_default_str();
    train->add_option("--dataset", o->dataset, "Data set: mnist or fashion")->capture_default_str();
    train->add_option("--epochs", o->train.epochs, "Number of passes over the training set")->capture_default_str();
    train->add_option("--batch-size,-b", o->train.batch, "Samples per optimizer step")->capture_default_str();
    train->add_option("--lr", o->lr, "Learning rate")->capture_default_str();
    train->add_option("--optimizer", o->optimizer, "adam, sgd or rmsprop")->capture_default_str();
    train->add_option("--momentum", o->momentum, "SGD momentum, in [0, 1)")->capture_default_str();
    train->add_option("--hidden", o->hidden, "Hidden layer sizes, comma separated (or 'none')")->capture_default_str();
    train->add_option("--activation", o->activation, "Hidden activation: relu or sigmoid")->capture_default_str();
    train->add_option("--dropout", o->model.dropout, "Dropout rate after each hidden layer, in [0, 1)")
        ->capture_default_str();
    train->add_option("--seed", o->train.seed, "Seed for initialisation, shuffling and dropout")->capture_default_str();
    train->add_option("--device", o->device, "auto (the GPU when usable), cpu or gpu")->capture_default_str();
    train->add_option("--threads", o->threads, "CPU threads (0: all cores)")->capture_default_str();
    train->add_option("--eval-batch", o->train.eval_batch, "Batch size for evaluation")->capture_default_str();
    train->add_flag("--no-graph", o->no_graph, "GPU: launch the step's kernels one by one instead of replaying a CUDA Graph");
    train->add_flag("--tf32", o->tf32, "GPU: allow TF32 tensor-core GEMMs (faster, less exact)");
    train->add_option("--metrics-out", o->metrics_out, "Write the per-epoch metrics to this file, one JSON object per line");
    commands.push_back({train, [o] { return run_train(*o); }});
}

}  // namespace cumnist::cli
