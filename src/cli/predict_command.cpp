// `cumnist predict`: classifies pictures of digits (PNG, JPEG, BMP, PGM; any size and colour) with
// a trained checkpoint, after preparing each the way MNIST's images were made (image.h), and
// prints the most probable classes. A file that cannot be read or holds no digit gets one error
// line and makes the exit status 1; the others are still classified.
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "cumnist/checkpoint.h"
#include "cumnist/image.h"
#include "cumnist/predict.h"

namespace cumnist::cli {
namespace {

namespace fs = std::filesystem;

struct PredictOptions {
    std::string model;
    std::vector<std::string> images;
    std::string save_preprocessed;
    std::string device = "cpu";
    int threads = 0;
    int top = 3;
    bool json = false;
};

// "98.2%"; "<0.1%" and ">99.9%" for what would round to 0.0% and 100.0%.
std::string percent(float p) {
    if (p < 0.0005f) return "<0.1%";
    if (p >= 0.9995f) return ">99.9%";
    return fmt::format("{:.1f}%", 100.0 * p);
}

// Where --save-preprocessed puts each image's 28×28 input: PATH itself for a single image (unless
// PATH is a folder); otherwise PATH is a folder (created) holding <stem>-28x28.png, numbered when
// two inputs share a stem.
std::vector<std::string> preprocessed_paths(const std::string& target, const std::vector<std::string>& images) {
    std::vector<std::string> out;
    if (target.empty()) return std::vector<std::string>(images.size());
    std::error_code ec;
    if (images.size() == 1 && !fs::is_directory(target, ec)) {
        if (fs::exists(target, ec) && fs::equivalent(target, images[0], ec))
            throw Error(fmt::format("--save-preprocessed: '{}' is the input image itself; choose another file", target));
        return {target};
    }
    if (!fs::is_directory(target, ec)) {
        fs::create_directories(target, ec);
        if (ec) throw Error(fmt::format("--save-preprocessed: cannot create the folder '{}': {}", target, ec.message()));
    }
    std::map<std::string, int> used;
    for (const std::string& image : images) {
        const std::string stem = fs::path(image).stem().string();
        const int k = ++used[stem];
        out.push_back((fs::path(target) / (k == 1 ? stem + "-28x28.png" : fmt::format("{}-{}-28x28.png", stem, k))).string());
    }
    return out;
}

int run_predict(const PredictOptions& o) {
    if (o.top < 1) throw Error(fmt::format("--top must be at least 1, got {}", o.top));
    set_threads(o.threads);
    const Device device = choose_device(o.device);
    const Checkpoint checkpoint = load_checkpoint(o.model);
    const ModelSpec& config = checkpoint.meta.model;
    if (config.inputs() != kMnistSide * kMnistSide)
        throw Error(fmt::format("'{}': the model takes {} inputs; predict prepares {}x{} = {}-pixel images", o.model,
                                config.inputs(), kMnistSide, kMnistSide, kMnistSide * kMnistSide));
    const std::vector<std::string> names = class_names(checkpoint.meta.dataset);
    const Framing framing = framing_for(checkpoint.meta.dataset);  // a Fashion-MNIST model sees products framed its way
    const std::vector<std::string> save_to = preprocessed_paths(o.save_preprocessed, o.images);
    {
        // Nothing written over the model or an image that is still to be read.
        std::vector<NamedPath> inputs = {{"--model", o.model}};
        for (const std::string& image : o.images) inputs.push_back({fmt::format("the input image '{}'", image), image});
        std::vector<NamedPath> outputs;
        for (const std::string& path : save_to) outputs.push_back({"--save-preprocessed", path});
        require_distinct(outputs, inputs);
    }
    const int top = std::min(o.top, config.classes);

    // Every image prepared first; a failure is reported in the order of the inputs, after the
    // predictions before it.
    struct Item {
        std::string error;
        PreprocessInfo info;
        int row = -1;  // its row in `pixels`
    };
    std::vector<Item> items(o.images.size());
    std::vector<uint8_t> pixels;
    int rows = 0;
    for (std::size_t i = 0; i < o.images.size(); ++i) {
        try {
            const std::vector<uint8_t> digit =
                preprocess_digit(read_image(o.images[i]), o.images[i], &items[i].info, framing);
            if (!save_to[i].empty()) write_png(save_to[i], Image{kMnistSide, kMnistSide, 1, digit});
            pixels.insert(pixels.end(), digit.begin(), digit.end());
            items[i].row = rows++;
        } catch (const Error& e) {
            items[i].error = e.what();
        }
    }
    Model model = load_model(checkpoint, device);
    const std::vector<Prediction> predictions = predict(model, pixels, rows);

    auto class_label = [&](int k) { return k < static_cast<int>(names.size()) ? fmt::format("{} {}", k, names[k]) : std::to_string(k); };
    nlohmann::json results = nlohmann::json::array();
    int failed = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
        const Item& item = items[i];
        if (item.row < 0) {
            ++failed;
            std::fflush(stdout);
            fmt::print(stderr, "cumnist: error: {}\n", item.error);
            if (o.json) results.push_back({{"file", o.images[i]}, {"error", item.error}});
            continue;
        }
        const Prediction& p = predictions[item.row];
        if (o.json) {
            nlohmann::json ranked = nlohmann::json::array();
            for (int r = 0; r < top; ++r) {
                const int k = p.ranking[r];
                nlohmann::json entry = {{"class", k}, {"probability", p.probabilities[k]}};
                if (k < static_cast<int>(names.size())) entry["name"] = names[k];
                ranked.push_back(entry);
            }
            nlohmann::json r = {{"file", o.images[i]},
                                {"class", p.top()},
                                {"probability", p.probabilities[p.top()]},
                                {"top", ranked},
                                {"probabilities", p.probabilities},
                                {"inverted", item.info.inverted}};
            if (p.top() < static_cast<int>(names.size())) r["name"] = names[p.top()];
            if (!save_to[i].empty()) r["preprocessed"] = save_to[i];
            results.push_back(r);
        } else {
            std::string line = fmt::format("{}: {} ({})", o.images[i], class_label(p.top()), percent(p.probabilities[p.top()]));
            for (int r = 1; r < top; ++r)
                line += fmt::format("{}{} ({})", r == 1 ? "  then " : ", ", class_label(p.ranking[r]),
                                    percent(p.probabilities[p.ranking[r]]));
            fmt::print("{}\n", line);
            if (!save_to[i].empty()) fmt::print("  the 28x28 image it classified: {}\n", save_to[i]);
        }
    }
    if (o.json) fmt::print("{}\n", nlohmann::json{{"model", o.model}, {"predictions", results}}.dump(2));
    std::fflush(stdout);
    return failed > 0 ? 1 : 0;
}

}  // namespace

void add_predict_command(CLI::App& parent, std::vector<Command>& commands) {
    auto o = std::make_shared<PredictOptions>();
    CLI::App* cmd = parent.add_subcommand(
        "predict",
        "Classify pictures of digits (PNG, JPEG, BMP, PGM; any size and colour), prepared the way MNIST was made: "
        "grayscale, light ink on black, cropped to the ink, scaled to fit 20x20, centred by mass in 28x28");
    cmd->add_option("--model,-m", o->model, "Checkpoint to use (written by cumnist train)")->required();
    cmd->add_option("images", o->images, "Image files")->required();
    cmd->add_option("--top", o->top, "How many classes to print per image")->capture_default_str();
    cmd->add_flag("--json", o->json, "Print the results as one JSON document");
    cmd->add_option("--save-preprocessed", o->save_preprocessed,
                    "Write the 28x28 image each input became: this PNG file for a single image, else a folder of "
                    "<name>-28x28.png files");
    cmd->add_option("--device", o->device,
                    "cpu, gpu or auto (the GPU when usable); cpu by default, since a few images are classified "
                    "before a GPU has started")
        ->capture_default_str();
    cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->capture_default_str();
    commands.push_back({cmd, [o] { return run_predict(*o); }});
}

}  // namespace cumnist::cli
