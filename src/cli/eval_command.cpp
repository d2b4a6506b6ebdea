// `cumnist eval`: loads a checkpoint and reports its test loss and accuracy, per-class accuracy
// and the confusion matrix as a table; --json writes all of it (with the per-sample predictions).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "cumnist/image.h"
#include "cumnist/checkpoint.h"
#include "cumnist/data.h"
#include "cumnist/evaluation.h"

namespace cumnist::cli {
namespace {

struct EvalOptions {
    std::string model;
    std::string data_dir = default_data_dir();
    std::string dataset;  // empty: the checkpoint's
    std::string device = "auto";
    std::string json_out;
    std::string misclassified_out;
    std::string logits_out;
    int misclassified_max = 100;
    int threads = 0;
    int eval_batch = 1000;
};

// Display names of the classes: Fashion-MNIST's ten categories, else the digits.
std::vector<std::string> class_names(const std::string& dataset, int classes) {
    static const char* const kFashion[] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                           "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
    std::vector<std::string> names;
    for (int c = 0; c < classes; ++c)
        names.push_back(dataset == "fashion" && c < 10 ? fmt::format("{} {}", c, kFashion[c]) : std::to_string(c));
    return names;
}

std::string percent(double fraction) { return std::isnan(fraction) ? "-" : fmt::format("{:.2f} %", 100.0 * fraction); }

// The confusion matrix, rows true and columns predicted, with each row's count and accuracy.
void print_confusion(const ClassificationReport& r, const std::vector<std::string>& names) {
    std::vector<int64_t> column(static_cast<std::size_t>(r.classes), 0);
    for (int t = 0; t < r.classes; ++t)
        for (int p = 0; p < r.classes; ++p) column[p] += r.count(t, p);
    int64_t largest = 1;  // the widest number in a column: a count or a column total
    for (int64_t v : column) largest = std::max(largest, v);
    const int cell = std::max<int>(4, static_cast<int>(std::to_string(largest).size()) + 1);
    int label_width = static_cast<int>(std::string("true \\ pred").size());
    for (const std::string& n : names) label_width = std::max(label_width, static_cast<int>(n.size()));
    const int n_width = std::max<int>(5, static_cast<int>(std::to_string(r.n).size()));
    // Digits line up with the counts (right-aligned); names read better left-aligned.
    const bool textual = std::any_of(names.begin(), names.end(), [](const std::string& n) { return n.size() > 3; });
    auto label = [&](const std::string& text) {
        return textual ? fmt::format("{:<{}}", text, label_width) : fmt::format("{:>{}}", text, label_width);
    };

    fmt::print("Confusion matrix (rows: true class, columns: predicted class)\n");
    std::string head = fmt::format("{:<{}}", "true \\ pred", label_width);
    for (int p = 0; p < r.classes; ++p) head += fmt::format("{:>{}}", p, cell);
    head += fmt::format("  | {:>{}} {:>9}", "n", n_width, "accuracy");
    fmt::print("{}\n{}\n", head, std::string(head.size(), '-'));
    for (int t = 0; t < r.classes; ++t) {
        std::string line = label(names[t]);
        for (int p = 0; p < r.classes; ++p) line += fmt::format("{:>{}}", r.count(t, p), cell);
        line += fmt::format("  | {:>{}} {:>9}", r.n_true(t), n_width, percent(r.class_accuracy(t)));
        fmt::print("{}\n", line);
    }
    fmt::print("{}\n", std::string(head.size(), '-'));
    std::string totals = label("predicted");
    for (int p = 0; p < r.classes; ++p) totals += fmt::format("{:>{}}", column[p], cell);
    totals += fmt::format("  | {:>{}} {:>9}", r.n, n_width, percent(r.accuracy));
    fmt::print("{}\n", totals);
}

// The most frequent mistakes, "4 -> 9: 12 times".
void print_top_confusions(const ClassificationReport& r, const std::vector<std::string>& names, int k) {
    struct Pair {
        int64_t count;
        int truth, predicted;
    };
    std::vector<Pair> pairs;
    for (int t = 0; t < r.classes; ++t)
        for (int p = 0; p < r.classes; ++p)
            if (t != p && r.count(t, p) > 0) pairs.push_back({r.count(t, p), t, p});
    std::stable_sort(pairs.begin(), pairs.end(), [](const Pair& a, const Pair& b) { return a.count > b.count; });
    if (pairs.empty()) return;
    fmt::print("Most frequent mistakes (true -> predicted):");
    for (std::size_t i = 0; i < pairs.size() && i < static_cast<std::size_t>(k); ++i)
        fmt::print("{} {} -> {} ({})", i ? "," : "", names[pairs[i].truth], names[pairs[i].predicted], pairs[i].count);
    fmt::print("\n");
}

int run_eval(EvalOptions& o) {
    set_threads(o.threads);
    if (o.eval_batch <= 0) throw Error(fmt::format("--eval-batch must be at least 1, got {}", o.eval_batch));
    const Checkpoint ckpt = load_checkpoint(o.model);  // before anything slow: a bad file fails at once
    const CheckpointMeta& meta = ckpt.meta;
    const std::string dataset = !o.dataset.empty() ? o.dataset : !meta.dataset.empty() ? meta.dataset : "mnist";
    {
        std::vector<NamedPath> inputs = dataset_inputs(o.data_dir, dataset);
        inputs.push_back({"--model", o.model});
        require_distinct(
            {{"--json", o.json_out}, {"--misclassified", o.misclassified_out}, {"--logits", o.logits_out}}, inputs);
        for (const auto& [flag, path] : {std::pair{"--json", o.json_out}, std::pair{"--misclassified", o.misclassified_out},
                                         std::pair{"--logits", o.logits_out}})
            if (!path.empty()) require_writable(path, flag);
    }
    const Device device = choose_device(o.device);
    const Dataset test = load_dataset(o.data_dir, dataset, Split::Test);
    if (test.features() != meta.model.inputs())
        throw Error(fmt::format("--model '{}' expects {} pixels per image, but {} test images are {}x{}", o.model,
                                meta.model.inputs(), dataset, test.rows, test.cols));
    if (meta.model.classes != 10)
        throw Error(fmt::format("--model '{}' has {} classes, but {} has 10", o.model, meta.model.classes, dataset));

    const bool gpu = device == Device::Cuda;
    fmt::print("cumnist eval: {}\n", o.model);
    fmt::print("  model      {} ({} parameters)\n", meta.model.describe(), parameter_count(meta.model));
    fmt::print("  trained    {} epoch{}, {} steps with {} (batch {}, seed {}){}\n", meta.epoch, meta.epoch == 1 ? "" : "s",
               meta.step, meta.optimizer.describe(), meta.batch, meta.seed,
               meta.dataset.empty() ? std::string() : fmt::format(" on {}", meta.dataset));
    fmt::print("  data       {}: {} images of {}x{} from {}\n", test.name, test.n, test.rows, test.cols,
               dataset_folder(o.data_dir, dataset));
    fmt::print("  device     {}\n", gpu ? "the GPU (" + device_name(Device::Cuda) + ")"
                                       : fmt::format("the CPU ({}, {})", device_name(Device::Cpu),
                                                     count_of(omp_get_max_threads(), "thread")));
    if (!meta.dataset.empty() && meta.dataset != dataset)
        fmt::print("  note       the model was trained on {}, not {}\n", meta.dataset, dataset);

    Model model = load_model(ckpt, device);
    const ClassificationReport r = evaluate_classifier(model, test, o.eval_batch);
    const std::vector<std::string> names = class_names(dataset, r.classes);
    int64_t correct = 0;
    for (int c = 0; c < r.classes; ++c) correct += r.count(c, c);

    fmt::print("\nTest loss {:.4f}, accuracy {:.4f} ({} of {} correct)\n\n", r.loss, r.accuracy, correct, r.n);
    print_confusion(r, names);
    print_top_confusions(r, names, 5);

    if (!o.misclassified_out.empty()) {
        std::vector<int> wrong, predicted;
        for (int i = 0; i < test.n; ++i)
            if (r.predictions[i] != test.labels[i]) wrong.push_back(i), predicted.push_back(r.predictions[i]);
        if (wrong.empty()) {
            fmt::print("No misclassified images: {} not written\n", o.misclassified_out);
        } else {
            write_misclassified_grid(o.misclassified_out, test, wrong, predicted, o.misclassified_max,
                                     cumnist::class_names(dataset));
            fmt::print("Wrote {} ({} of the {} misclassified images)\n", o.misclassified_out,
                       std::min<std::size_t>(wrong.size(), static_cast<std::size_t>(o.misclassified_max)),
                       wrong.size());
        }
    }
    if (!o.json_out.empty()) {
        nlohmann::json per_class = nlohmann::json::array(), confusion = nlohmann::json::array();
        for (int t = 0; t < r.classes; ++t) {
            const double acc = r.class_accuracy(t);
            per_class.push_back({{"class", t},
                                 {"name", names[t]},
                                 {"n", r.n_true(t)},
                                 {"correct", r.count(t, t)},
                                 {"accuracy", std::isnan(acc) ? nlohmann::json(nullptr) : nlohmann::json(acc)}});
            nlohmann::json row = nlohmann::json::array();
            for (int p = 0; p < r.classes; ++p) row.push_back(r.count(t, p));
            confusion.push_back(row);
        }
        const nlohmann::json out = {
            {"model", o.model},
            {"checkpoint",
             {{"model", meta.model.describe()},
              {"optimizer", meta.optimizer.describe()},
              {"epoch", meta.epoch},
              {"step", meta.step},
              {"seed", meta.seed},
              {"dataset", meta.dataset}}},
            {"dataset", dataset},
            {"split", "test"},
            {"device", to_string(device)},
            {"n", r.n},
            {"loss", r.loss},
            {"accuracy", r.accuracy},
            {"correct", correct},
            {"per_class", per_class},
            {"confusion", confusion},
            {"confusion_layout", "rows: true class, columns: predicted class"},
            {"predictions", r.predictions}};
        write_file_atomically(o.json_out, out.dump() + "\n");
        fmt::print("Wrote {}\n", o.json_out);
    }
    if (!o.logits_out.empty()) {
        write_file_atomically(o.logits_out, npy_bytes(r.logits, r.n, r.classes));
        fmt::print("Wrote {} ({} x {} float32 logits, in test-set order)\n", o.logits_out, r.n, r.classes);
    }
    return 0;
}

}  // namespace

void add_eval_command(CLI::App& parent, std::vector<Command>& commands) {
    auto o = std::make_shared<EvalOptions>();
    CLI::App* eval = parent.add_subcommand(
        "eval", "Evaluate a checkpoint on a test set: loss, accuracy, per-class accuracy, confusion matrix");
    eval->add_option("--model,-m", o->model, "Checkpoint (.safetensors) written by cumnist train --save")->required();
    eval->add_option("--data", o->data_dir, "Data folder holding <dataset>/ with the IDX files, or the folder of the IDX files itself")->capture_default_str();
    eval->add_option("--dataset", o->dataset, "Data set: mnist or fashion (default: the one the model was trained on)");
    eval->add_option("--device", o->device, "auto (the GPU when usable), cpu or gpu")->capture_default_str();
    eval->add_option("--threads", o->threads, "CPU threads (0: all cores)")->capture_default_str();
    eval->add_option("--eval-batch", o->eval_batch, "Batch size for evaluation")->capture_default_str();
    eval->add_option("--misclassified", o->misclassified_out,
                     "Write a PNG grid of misclassified test images, captioned with true and predicted class");
    eval->add_option("--misclassified-max", o->misclassified_max, "At most this many images in that grid")
        ->capture_default_str()
        ->check(CLI::Range(1, 10000));
    eval->add_option("--json", o->json_out, "Also write the results (and every prediction) to this JSON file");
    eval->add_option("--logits", o->logits_out,
                     "Also write every test image's logits to this NumPy .npy file (float32, images x classes)");
    commands.push_back({eval, [o] { return run_eval(*o); }});
}

}  // namespace cumnist::cli
