// `cumnist train`: trains an MLP, printing Keras-style per-epoch lines (with a live progress
// bar on a terminal), and evaluates on the test set after every epoch. --save writes checkpoints
// every epoch; --resume continues a saved run exactly.
#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <algorithm>
#include <optional>

#include "cli_common.h"
#include "cumnist/checkpoint.h"
#include "cumnist/data.h"
#include "cumnist/schedule.h"
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
    std::string save_dir;
    std::string resume;
    std::string placement = "auto";
    CLI::App* app = nullptr;  // to tell flags given on the command line from defaults
    int threads = 0;
    float lr = 1e-3f;
    float momentum = 0.0f;
    double validation_split = 0.0;  // --validation-split
    std::string schedule_name = "constant";  // --lr-schedule
    LrSchedule schedule;                     // its settings (--lr-step-epochs, --lr-gamma, ...)
    int early_stopping = 0;                  // --early-stopping PATIENCE
    std::string best_on = "accuracy";        // --best-on: what best.safetensors is chosen by
    bool best_on_loss = false;
    bool no_graph = false;
    bool tf32 = false;
    std::string model_text = "mlp";  // --model
    TrainConfig train;
    MlpConfig mlp;    // --hidden, --activation, --dropout
    ModelSpec model;  // resolved once the data's image size is known
    // Where the run prints (a sweep's trial run in process: its log), whether it installs its own
    // SIGINT/SIGTERM handlers, and data already loaded by the caller.
    std::FILE* out = stdout;
    std::FILE* err = stderr;
    bool handle_signals = true;
    const LoadedData* preloaded = nullptr;
};

// Keras-style live progress line, redrawn in place; only on a terminal.
class ProgressBar {
public:
    explicit ProgressBar(std::FILE* out) : m_out(out), m_enabled(::isatty(::fileno(out)) != 0) {}
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
        fmt::print(m_out, "{}\x1b[K", line);
        std::fflush(m_out);
    }
    void finish() {
        if (m_enabled) fmt::print(m_out, "\r\x1b[K");
    }

private:
    static int digits(int n) { return static_cast<int>(std::to_string(n).size()); }
    std::FILE* m_out;
    bool m_enabled;
    std::chrono::steady_clock::time_point m_t0;
    double m_last = -1.0;
};

// --save: the folder must exist (it is created) and be writable before any training is done.
void prepare_save_dir(const std::string& dir) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
        throw Error(fmt::format("--save: '{}' exists and is not a folder", dir));
    fs::create_directories(dir, ec);
    if (ec) throw Error(fmt::format("--save: cannot create folder '{}': {}", dir, ec.message()));
    const std::string probe = dir + "/.cumnist-write-test";
    bool ok = false;
    {
        std::ofstream out(probe, std::ios::binary | std::ios::trunc);
        ok = static_cast<bool>(out << "ok" << std::flush);
    }
    const int err = errno;
    std::remove(probe.c_str());
    if (!ok) throw Error(fmt::format("--save: cannot write into folder '{}': {}", dir, std::strerror(err)));
}

// --resume: the run continues with the checkpoint's model, optimizer, seed, batch size and data
// set. A flag given on the command line that contradicts one of them is an error (a different
// model cannot take the saved parameters; a different schedule would not be the same run).
void apply_checkpoint_settings(TrainOptions& o, OptimizerConfig& opt, const CheckpointMeta& meta) {
    auto given = [&](const char* flag) { return o.app->count(flag) > 0; };
    auto conflict = [&](const char* flag, const std::string& value, const std::string& saved) {
        throw Error(fmt::format("--resume '{}': {} {} contradicts the checkpoint, which has {}; a resumed run keeps the "
                                "saved model and settings (leave out {}, or start a new run without --resume)",
                                o.resume, flag, value, saved, flag));
    };
    // The model the flags given describe, on the checkpoint's input, against the checkpoint's.
    const std::pair<const char*, std::string> model_flags[] = {{"--model", o.model_text},
                                                                {"--hidden", o.hidden},
                                                                {"--activation", o.activation},
                                                                {"--dropout", fmt::format("{}", o.mlp.dropout)}};
    for (const auto& [flag, value] : model_flags)
        if (given(flag) && parse_model(o.model_text, meta.model.input, meta.model.classes, o.mlp) != meta.model)
            conflict(flag, value, fmt::format("the model {}", meta.model.describe()));
    if (given("--optimizer") && opt.kind != meta.optimizer.kind)
        conflict("--optimizer", o.optimizer, meta.optimizer.describe());
    if (given("--lr") && opt.lr != meta.optimizer.lr)
        conflict("--lr", fmt::format("{}", o.lr), meta.optimizer.describe());
    if (given("--momentum") && opt.momentum != meta.optimizer.momentum)
        conflict("--momentum", fmt::format("{}", o.momentum), meta.optimizer.describe());
    if (given("--seed") && o.train.seed != meta.seed)
        conflict("--seed", std::to_string(o.train.seed), fmt::format("seed {}", meta.seed));
    if (given("--batch-size") && o.train.batch != meta.batch)
        conflict("--batch-size", std::to_string(o.train.batch), fmt::format("batch size {}", meta.batch));
    if (given("--dataset") && !meta.dataset.empty() && o.dataset != meta.dataset)
        conflict("--dataset", o.dataset, fmt::format("data set {}", meta.dataset));
    const char* const schedule_flags[] = {"--lr-schedule",      "--lr-step-epochs", "--lr-gamma",    "--lr-warmup-epochs",
                                          "--lr-min-factor",    "--lr-patience",    "--lr-min-delta"};
    for (const char* flag : schedule_flags)
        if (given(flag) && o.schedule != meta.schedule)
            conflict(flag, o.schedule.describe(), fmt::format("the learning-rate schedule {}", meta.schedule.describe()));
    if (given("--early-stopping") && o.early_stopping != meta.early_stopping)
        conflict("--early-stopping", std::to_string(o.early_stopping),
                 meta.early_stopping > 0 ? fmt::format("early stopping after {} epochs", meta.early_stopping)
                                         : std::string("no early stopping"));
    if (given("--best-on") && o.best_on_loss != meta.best_on_loss)
        conflict("--best-on", o.best_on, meta.best_on_loss ? "best.safetensors chosen by the loss"
                                                           : "best.safetensors chosen by the accuracy");
    if (given("--validation-split") && o.validation_split != meta.validation_split)
        conflict("--validation-split", fmt::format("{}", o.validation_split),
                 meta.validation_split > 0 ? fmt::format("validation split {}", meta.validation_split)
                                           : std::string("no validation split"));
    o.model = meta.model;
    opt = meta.optimizer;
    o.train.seed = meta.seed;
    o.train.batch = meta.batch;
    o.validation_split = meta.validation_split;
    o.schedule = meta.schedule;
    o.early_stopping = meta.early_stopping;
    o.best_on_loss = meta.best_on_loss;
    if (!meta.dataset.empty()) o.dataset = meta.dataset;
    // A cosine schedule is laid out over the run's epochs: another total would change its rates.
    if (meta.schedule.kind == ScheduleKind::Cosine && given("--epochs") && o.train.epochs != meta.epochs)
        conflict("--epochs", std::to_string(o.train.epochs),
                 fmt::format("a cosine learning-rate schedule over {} epochs", meta.epochs));
    if (!given("--epochs")) o.train.epochs = meta.epochs;
    if (o.train.epochs <= meta.epoch)
        throw Error(fmt::format("--resume '{}': the checkpoint has finished epoch {} of {}; pass --epochs N with N > {} "
                                "to train further",
                                o.resume, meta.epoch, given("--epochs") ? o.train.epochs : meta.epochs, meta.epoch));
}

// No epoch chosen as the best yet.
constexpr double kNoBest = -HUGE_VAL;
bool best_epoch_unset(double best) { return best == kNoBest; }

int run_train(TrainOptions& o) {
    o.mlp.hidden = parse_hidden(o.hidden);
    o.mlp.activation = parse_activation(o.activation);
    o.mlp.validate();
    if (o.model_text != "mlp")
        for (const char* flag : {"--hidden", "--activation", "--dropout"})
            if (o.app->count(flag) > 0)
                throw Error(fmt::format("{} describes the MLP (--model mlp); --model '{}' has its own layers", flag,
                                        o.model_text));
    // A bad --model fails here, before any data is read (on a 28x28 input; checked again below
    // against the data's own image size).
    if (o.resume.empty()) (void)parse_model(o.model_text, Shape{1, 28, 28}, 10, o.mlp);
    OptimizerConfig opt;
    opt.kind = parse_optimizer(o.optimizer);
    opt.lr = o.lr;
    opt.momentum = o.momentum;
    opt.validate();
    o.schedule.kind = parse_schedule_kind(o.schedule_name);
    o.schedule.validate();
    {
        // A schedule setting the chosen schedule has no use for is a mistake, as --momentum with adam.
        using K = ScheduleKind;
        const std::pair<const char*, std::vector<K>> settings[] = {{"--lr-step-epochs", {K::Step}},
                                                                   {"--lr-gamma", {K::Step, K::Plateau}},
                                                                   {"--lr-warmup-epochs", {K::Cosine}},
                                                                   {"--lr-min-factor", {K::Cosine}},
                                                                   {"--lr-patience", {K::Plateau}},
                                                                   {"--lr-min-delta", {K::Plateau}}};
        for (const auto& [flag, kinds] : settings)
            if (o.app->count(flag) > 0 && std::find(kinds.begin(), kinds.end(), o.schedule.kind) == kinds.end()) {
                std::vector<std::string> names;
                for (K k : kinds) names.emplace_back(to_string(k));
                throw Error(fmt::format("{} applies to --lr-schedule {} only; the schedule is {}", flag,
                                        fmt::join(names, " or "), to_string(o.schedule.kind)));
            }
    }
    if (o.best_on != "accuracy" && o.best_on != "loss")
        throw Error(fmt::format("--best-on: expected accuracy or loss, got '{}'", o.best_on));
    o.best_on_loss = o.best_on == "loss";
    if (o.early_stopping < 0) throw Error(fmt::format("--early-stopping must be 0 (off) or more, got {}", o.early_stopping));
    o.train.use_graph = !o.no_graph;
    o.train.tf32 = o.tf32;
    o.train.placement = parse_data_placement(o.placement);
    if (o.train.epochs <= 0 || o.train.epochs > kMaxEpochs)
        throw Error(fmt::format("--epochs must be in [1, {}], got {}", kMaxEpochs, o.train.epochs));
    if (o.train.batch <= 0) throw Error(fmt::format("--batch-size must be at least 1, got {}", o.train.batch));
    std::optional<Checkpoint> resumed;
    if (!o.resume.empty()) {
        resumed = load_checkpoint(o.resume);
        apply_checkpoint_settings(o, opt, resumed->meta);
        // A resumed run keeps saving where it was saving, unless told otherwise.
        if (o.save_dir.empty()) o.save_dir = std::filesystem::path(o.resume).parent_path().string();
        if (o.save_dir.empty()) o.save_dir = ".";
    }
    // A flag the chosen optimizer has no use for is a mistake, not something to ignore.
    if (o.app->count("--momentum") > 0 && opt.kind != OptimizerKind::Sgd)
        throw Error(fmt::format("--momentum applies to --optimizer sgd only; {} has no momentum", to_string(opt.kind)));
    if (!o.save_dir.empty()) prepare_save_dir(o.save_dir);
    if (!o.metrics_out.empty()) require_writable(o.metrics_out, "--metrics-out");  // fail now, not after an epoch
    {
        // No output over an input, and no two outputs in one file (the checkpoints a resumed run
        // saves over are its own: --resume is an input of --metrics-out only).
        std::vector<NamedPath> inputs = dataset_inputs(o.data_dir, o.dataset);
        const std::vector<NamedPath> checkpoints =
            o.save_dir.empty() ? std::vector<NamedPath>{}
                               : std::vector<NamedPath>{{"--save", o.save_dir + "/last.safetensors"},
                                                        {"--save", o.save_dir + "/best.safetensors"}};
        std::vector<NamedPath> outputs = checkpoints;
        outputs.insert(outputs.begin(), {"--metrics-out", o.metrics_out});
        require_distinct(outputs, inputs);  // over the data, or one another
        if (!o.resume.empty()) require_distinct({{"--metrics-out", o.metrics_out}}, {{"--resume", o.resume}});
    }
    set_threads(o.threads, o.err);
    o.train.device = choose_device(o.device, o.out);
    if (o.train.device == Device::Cpu && (o.tf32 || o.no_graph))
        fmt::print(o.err, "{}: GPU only, no effect on the CPU.\n",
                   o.tf32 && o.no_graph ? "--tf32 and --no-graph" : o.tf32 ? "--tf32" : "--no-graph");

    if (o.schedule.kind == ScheduleKind::Cosine && o.schedule.warmup_epochs >= o.train.epochs)
        throw Error(fmt::format("--lr-warmup-epochs {} leaves no epoch of the {} for the cosine", o.schedule.warmup_epochs,
                                o.train.epochs));
    // What watches the validation loss needs one: choosing on the test set is what a split avoids.
    if (o.validation_split == 0.0 && (o.schedule.kind == ScheduleKind::Plateau || o.early_stopping > 0))
        throw Error(fmt::format("{} watches the validation loss: give --validation-split F too (e.g. 0.1)",
                                o.early_stopping > 0 ? "--early-stopping" : "--lr-schedule plateau"));
    if (o.validation_split != 0.0 && !(o.validation_split > 0.0 && o.validation_split < 1.0))
        throw Error(fmt::format("--validation-split must be a fraction in (0, 1), got {}", o.validation_split));
    // The data: what the caller loaded when it is the data asked for, else read now.
    const bool preloaded = o.preloaded && o.preloaded->data_dir == o.data_dir && o.preloaded->dataset == o.dataset;
    std::optional<Dataset> loaded_train, loaded_test;
    if (!preloaded) {
        loaded_train.emplace(load_dataset(o.data_dir, o.dataset, Split::Train));
        loaded_test.emplace(load_dataset(o.data_dir, o.dataset, Split::Test));
    }
    const Dataset& full_train = preloaded ? o.preloaded->train : *loaded_train;
    const Dataset& test = preloaded ? o.preloaded->test : *loaded_test;
    // --validation-split: a stratified, seeded share of the training set is held out, evaluated
    // after every epoch and used to choose the best checkpoint; the test set is evaluated once, at
    // the end.
    std::optional<ValidationSplit> split;
    if (o.validation_split > 0) split = split_validation(full_train, o.validation_split, o.train.seed);
    const Dataset& train = split ? split->train : full_train;
    const bool validating = split.has_value();
    const char* const eval_set = validating ? "validation" : "test";
    if (resumed && o.model.inputs() != train.features())
        throw Error(fmt::format("--resume '{}': the model takes {} pixels per image, but {} images are {}x{}", o.resume,
                                o.model.inputs(), o.dataset, train.rows, train.cols));
    if (!resumed) o.model = parse_model(o.model_text, Shape{1, train.rows, train.cols}, 10, o.mlp);
    if (test.features() != train.features())
        throw Error(fmt::format("test images are {}x{}, training images {}x{}", test.rows, test.cols, train.rows,
                                train.cols));

    const bool gpu = o.train.device == Device::Cuda;
    fmt::print(o.out, "cumnist: training on {} ({})\n", gpu ? "the GPU" : "the CPU",
               gpu ? device_name(Device::Cuda) : fmt::format("{}, {}", device_name(Device::Cpu), count_of(omp_get_max_threads(), "thread")));
    fmt::print(o.out, "  model      {} ({} parameters)\n", o.model.describe(), parameter_count(o.model));
    fmt::print(o.out, "  optimizer  {}{}\n", opt.describe(),
               o.schedule.kind == ScheduleKind::Constant ? "" : ", learning rate " + o.schedule.describe());
    if (o.early_stopping > 0)
        fmt::print(o.out, "  stopping   early once the validation loss has not improved for {}\n",
                   count_of(o.early_stopping, "epoch"));
    fmt::print(o.out, "  data       {}: {} training, {} test images of {}x{} from {}\n", o.dataset, train.n, test.n,
               train.rows, train.cols, dataset_folder(o.data_dir, o.dataset));
    if (validating)
        fmt::print(o.out, "  validation {} images ({:g} % of the training set, stratified by class, seed {}) held out and "
                   "evaluated after every epoch; the test set once, after the last\n",
                   split->validation.n, 100.0 * o.validation_split, o.train.seed);
    fmt::print(o.out, "  schedule   {} of {} (batch {}), seed {}{}\n", count_of(o.train.epochs, "epoch"),
               count_of((train.n + o.train.batch - 1) / o.train.batch, "step"), o.train.batch, o.train.seed,
               gpu ? fmt::format(", {}{}", o.train.use_graph ? "CUDA Graph" : "no graph", o.train.tf32 ? ", TF32" : ", FP32")
                   : "");

    Trainer trainer(o.model, opt, o.train, train);
    if (gpu || trainer.placement() != DataPlacement::Resident) {
        const double mib = static_cast<double>(train.images.size() + train.labels.size()) / (1024.0 * 1024.0);
        const std::string chosen = o.train.placement == DataPlacement::Auto ? " (auto)" : "";
        if (trainer.placement() == DataPlacement::Resident)
            fmt::print(o.out, "  placement  resident{}: the training set ({:.1f} MiB) is copied to the GPU once\n", chosen, mib);
        else
            fmt::print(o.out, "  placement  stream{}: the training set ({:.1f} MiB) stays in host memory; a loader thread "
                       "stages each batch{}\n",
                       chosen, mib, gpu ? ", copied to the GPU while the step before it runs" : "");
    }
    CheckpointMeta meta;
    meta.epochs = o.train.epochs;
    meta.dataset = o.dataset;
    meta.validation_split = o.validation_split;
    meta.schedule = o.schedule;
    meta.early_stopping = o.early_stopping;
    meta.best_on_loss = o.best_on_loss;
    // The choice of best.safetensors: the highest accuracy, or the lowest loss, on the evaluation set.
    const auto better = [&](const EpochMetrics& m, double best) {
        const double v = o.best_on_loss ? m.test_loss : m.test_accuracy;
        return std::isfinite(v) && (best_epoch_unset(best) || (o.best_on_loss ? v < best : v > best));
    };
    std::vector<double> eval_losses;  // per epoch done: the evaluation set's loss (the schedule's and early stopping's input)
    std::string metrics_text;
    double best = kNoBest, total_seconds = 0.0;
    int best_epoch = 0, first_epoch = 1, resume_step = 0;
    if (resumed) {
        restore_checkpoint(trainer, *resumed, o.resume);
        meta.history = resumed->meta.history;
        first_epoch = resumed->meta.epoch + 1;
        resume_step = resumed->meta.epoch_step;
        for (const EpochMetrics& m : meta.history) {
            eval_losses.push_back(m.test_loss);
            if (better(m, best)) best = o.best_on_loss ? m.test_loss : m.test_accuracy, best_epoch = m.epoch;
            metrics_text += metrics_json(m) + "\n";
        }
        fmt::print(o.out, "  resumed    from {}: epoch {} done ({} steps), continuing with epoch {}{}\n", o.resume,
                   resumed->meta.epoch, resumed->meta.step, first_epoch,
                   resume_step > 0 ? fmt::format(" at step {}", resume_step + 1) : "");
        resumed.reset();
    }
    if (!o.save_dir.empty())
        fmt::print(o.out, "  saving     {}/last.safetensors every epoch, {}/best.safetensors at the {} {} {}\n",
                   o.save_dir, o.save_dir, o.best_on_loss ? "lowest" : "best", eval_set,
                   o.best_on_loss ? "loss" : "accuracy");
    const ResidentData test_data(test, o.train.device);
    std::optional<ResidentData> validation_data;
    if (validating) validation_data.emplace(split->validation, o.train.device);
    const ResidentData& epoch_data = validating ? *validation_data : test_data;
    ProgressBar bar(o.out);
    trainer.set_stop_flag(&g_stop_requested);
    if (o.handle_signals) install_stop_handlers();
    bool graph_warned = false;  // a failed CUDA Graph capture is reported once
    int last_epoch = first_epoch - 1;
    for (int epoch = first_epoch; epoch <= o.train.epochs; ++epoch) {
        if (should_stop_early(eval_losses, o.early_stopping)) {
            const auto best_loss = std::min_element(eval_losses.begin(), eval_losses.end());
            fmt::print(o.out, "Early stopping after epoch {}: the validation loss has not improved for {} (best {:.4f}, epoch "
                       "{})\n",
                       epoch - 1, count_of(o.early_stopping, "epoch"), *best_loss, best_loss - eval_losses.begin() + 1);
            break;
        }
        last_epoch = epoch;
        fmt::print(o.out, "Epoch {}/{}\n", epoch, o.train.epochs);
        std::fflush(o.out);
        bar.start();
        const int first_step = std::exchange(resume_step, 0);
        const float lr_factor = static_cast<float>(o.schedule.factor(epoch, o.train.epochs, eval_losses));
        trainer.set_lr_scale(lr_factor);
        EpochMetrics m = trainer.train_epoch(
            epoch, &epoch_data, [&](int s, int n, double loss, double acc) { bar.update(s, n, loss, acc); }, first_step);
        m.on_validation = validating;
        m.lr = static_cast<double>(opt.lr * lr_factor);  // as the steps compute it
        bar.finish();
        if (!m.completed) {
            // Interrupted: the step in flight has finished; keep the state when --save is set.
            const int signal_number = stop_signal();
            const int done = first_step + m.steps;
            fmt::print(o.out, "Interrupted by {} in epoch {} after step {} of {}.\n",
                       signal_number == SIGTERM ? "SIGTERM" : "SIGINT", epoch, done, trainer.steps_per_epoch());
            if (!o.save_dir.empty()) {
                meta.epoch = epoch - 1;
                meta.epoch_step = done;
                save_checkpoint(o.save_dir + "/last.safetensors", capture_checkpoint(trainer, meta));
                fmt::print(o.out, "Saved {}/last.safetensors; continue with: cumnist train --resume {}/last.safetensors\n",
                           o.save_dir, o.save_dir);
            }
            std::fflush(o.out);
            return 128 + (signal_number == SIGTERM ? SIGTERM : SIGINT);
        }
        if (!graph_warned && !trainer.graph_failure().empty()) {
            fmt::print(o.err, "Warning: {}; training goes on with plain launches (as --no-graph).\n",
                       trainer.graph_failure());
            graph_warned = true;
        }
        const int steps = trainer.steps_per_epoch();
        // After a resume inside the epoch, loss, accuracy and speed cover only the steps run here.
        const std::string covered =
            m.first_step > 0 ? fmt::format(" (steps {}-{} only: resumed inside the epoch)", m.first_step + 1, steps) : "";
        fmt::print(o.out, "{}/{} [==============================] - {} {:.0f}us/step - loss: {:.4f} - accuracy: {:.4f} - "
                   "val_loss: {:.4f} - val_accuracy: {:.4f}{} - {:.0f} samples/s{}\n",
                   steps, steps, format_duration(m.seconds), m.seconds / m.steps * 1e6, m.train_loss, m.train_accuracy,
                   m.test_loss, m.test_accuracy,
                   o.schedule.kind == ScheduleKind::Constant ? "" : fmt::format(" - lr: {:.4g}", m.lr),
                   m.samples_per_second, covered);
        std::fflush(o.out);
        total_seconds += m.seconds + m.eval_seconds;
        eval_losses.push_back(m.test_loss);
        const bool improved = better(m, best);
        if (improved) best = o.best_on_loss ? m.test_loss : m.test_accuracy, best_epoch = epoch;
        if (!o.save_dir.empty()) {
            meta.epoch = epoch;
            meta.epoch_step = 0;
            meta.history.push_back(m);
            const Checkpoint c = capture_checkpoint(trainer, meta);
            save_checkpoint(o.save_dir + "/last.safetensors", c);
            if (improved) save_checkpoint(o.save_dir + "/best.safetensors", c);
            fmt::print(o.out, "Saved {}/last.safetensors{}\n", o.save_dir, improved ? " and best.safetensors" : "");
        }
        if (!o.metrics_out.empty()) {
            metrics_text += metrics_json(m) + "\n";
            write_file_atomically(o.metrics_out, metrics_text);
        }
    }
    const int epochs_run = last_epoch - first_epoch + 1;
    fmt::print(o.out, "Done: {} epoch{} in {}; {} {} {} {:.4f} (epoch {})\n", epochs_run, epochs_run == 1 ? "" : "s",
               format_duration(total_seconds), o.best_on_loss ? "lowest" : "best", eval_set,
               o.best_on_loss ? "loss" : "accuracy", best, best_epoch);
    if (validating) {
        // The test set, once, after selection: the last epoch's model here; the best checkpoint's
        // with `cumnist eval --model .../best.safetensors`.
        const Evaluation t = trainer.evaluate(test_data);
        fmt::print(o.out, "Test (evaluated once, after the last epoch): loss {:.4f} - accuracy {:.4f} on {} images{}\n", t.loss,
                   t.accuracy, t.n,
                   o.save_dir.empty() ? "" : fmt::format("; the best checkpoint: cumnist eval --model {}/best.safetensors",
                                                         o.save_dir));
    }
    if (gpu && trainer.graph_nodes() > 0) fmt::print(o.out, "CUDA Graph: {} nodes per training step\n", trainer.graph_nodes());
    return 0;
}

// Defines the train command's options on `parent`, bound to `o`.
CLI::App* define_train_command(CLI::App& parent, const std::shared_ptr<TrainOptions>& o) {
    CLI::App* train = parent.add_subcommand("train", "Train a model (the MLP by default) and evaluate it on the test set (or a validation split) after every epoch");
    train->add_option("--data", o->data_dir, "Data folder holding <dataset>/ with the IDX files, or the folder of the IDX files itself")->capture_default_str();
    train->add_option("--dataset", o->dataset, "Data set: mnist or fashion")->capture_default_str();
    train->add_option("--epochs", o->train.epochs, "Number of passes over the training set")->capture_default_str();
    train->add_option("--batch-size,-b", o->train.batch, "Samples per optimizer step")->capture_default_str();
    train->add_option("--lr", o->lr, "Learning rate")->capture_default_str();
    train->add_option("--optimizer", o->optimizer, "adam, sgd or rmsprop")->capture_default_str();
    train->add_option("--momentum", o->momentum, "SGD momentum, in [0, 1)")->capture_default_str();
    train->add_option("--model", o->model_text, model_help())->capture_default_str();
    train->add_option("--hidden", o->hidden, "MLP: hidden layer sizes, comma separated (or 'none')")->capture_default_str();
    train->add_option("--activation", o->activation, "MLP: hidden activation, relu, sigmoid or tanh")->capture_default_str();
    train->add_option("--dropout", o->mlp.dropout, "MLP: dropout rate after each hidden layer, in [0, 1)")
        ->capture_default_str();
    train->add_option("--seed", o->train.seed, "Seed for initialisation, shuffling and dropout")
        ->check(unsigned_64())
        ->capture_default_str();
    train->add_option("--device", o->device, "auto (the GPU when usable), cpu or gpu")->capture_default_str();
    train->add_option("--threads", o->threads, "CPU threads (0: all cores)")->capture_default_str();
    train->add_option("--eval-batch", o->train.eval_batch, "Batch size for evaluation")->capture_default_str();
    train->add_flag("--no-graph", o->no_graph, "GPU: launch the step's kernels one by one instead of replaying a CUDA Graph");
    train->add_flag("--tf32", o->tf32, "GPU: allow TF32 tensor-core GEMMs (faster, less exact)");
    train->add_option("--data-placement", o->placement,
                      "auto, resident (the training set uploaded to the device once) or stream (batches copied in as "
                      "they are needed, for data sets larger than device memory); auto: resident when it takes under "
                      "half of the free GPU memory")
        ->capture_default_str();
    train->add_option("--validation-split", o->validation_split,
                      "Hold out this fraction of the training set (stratified by class, seeded) for per-epoch "
                      "validation and the choice of best.safetensors; the test set is then evaluated once, at the end")
        ->capture_default_str();
    train->add_option("--lr-schedule", o->schedule_name,
                      "Learning-rate schedule, per epoch: constant, step (x gamma every --lr-step-epochs), cosine "
                      "(optional linear warm-up, then falling towards --lr-min-factor) or plateau (x gamma after --lr-patience epochs "
                      "without a better validation loss; needs --validation-split)")
        ->capture_default_str();
    train->add_option("--lr-step-epochs", o->schedule.step_epochs, "step: epochs between decays")->capture_default_str();
    train->add_option("--lr-gamma", o->schedule.gamma, "step, plateau: the factor of each decay, in (0, 1)")
        ->capture_default_str();
    train->add_option("--lr-warmup-epochs", o->schedule.warmup_epochs, "cosine: epochs of linear warm-up (epoch e of w at e/(w+1) of the rate)")
        ->capture_default_str();
    train->add_option("--lr-min-factor", o->schedule.min_factor, "cosine: the fraction of --lr the curve falls towards (reached after the last epoch)")
        ->capture_default_str();
    train->add_option("--lr-patience", o->schedule.patience, "plateau: epochs without improvement before a decay")
        ->capture_default_str();
    train->add_option("--lr-min-delta", o->schedule.min_delta, "plateau: the fall in validation loss that counts")
        ->capture_default_str();
    train->add_option("--early-stopping", o->early_stopping,
                      "Stop once the validation loss has not improved for this many epochs (0: never; needs "
                      "--validation-split); best.safetensors keeps the best epoch's model (--best-on)")
        ->capture_default_str();
    train->add_option("--best-on", o->best_on,
                      "What best.safetensors is chosen by: accuracy (the highest) or loss (the lowest), on the "
                      "validation split or else the test set")
        ->capture_default_str();
    train->add_option("--metrics-out", o->metrics_out, "Write the per-epoch metrics to this file, one JSON object per line");
    train->add_option("--save", o->save_dir,
                      "Checkpoint folder: last.safetensors after every epoch (and on SIGINT/SIGTERM), best.safetensors at "
                      "the best epoch (--best-on; default with --resume: the checkpoint's folder)");
    train->add_option("--resume", o->resume,
                      "Continue the run saved in this checkpoint exactly (its model, optimizer, seed and batch size); "
                      "--epochs is the total to reach");
    o->app = train;
    return train;
}

}  // namespace

void add_train_command(CLI::App& parent, std::vector<Command>& commands) {
    auto o = std::make_shared<TrainOptions>();
    CLI::App* train = define_train_command(parent, o);
    commands.push_back({train, [o] { return run_train(*o); }});
}

int train_in_process(const std::vector<std::string>& args, const LoadedData& data, std::FILE* log) {
    auto o = std::make_shared<TrainOptions>();
    CLI::App parent{"cumnist"};
    parent.name("cumnist");
    define_train_command(parent, o);
    std::vector<std::string> argv = {"train"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::reverse(argv.begin(), argv.end());  // CLI11 takes the arguments last first
    try {
        parent.parse(argv);
    } catch (const CLI::ParseError& e) {
        fmt::print(log, "cumnist: error: {} (see cumnist train --help)\n", e.what());
        return 2;
    }
    o->out = o->err = log;
    o->handle_signals = false;
    o->preloaded = &data;
    return run_reporting_errors([&] { return run_train(*o); }, log);
}

}  // namespace cumnist::cli
