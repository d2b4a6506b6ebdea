// `cumnist show`: a PNG grid of random images from a data set with their labels (the Keras
// notebook's display_images: 2 rows of 5 training images titled "Label: 7").
#include <memory>
#include <random>

#include "cli_common.h"
#include "cumnist/data.h"
#include "cumnist/image.h"

namespace cumnist::cli {
namespace {

struct ShowOptions {
    std::string data_dir = default_data_dir();
    std::string dataset = "mnist";
    std::string split = "train";
    std::string out = "samples.png";
    int count = 10;
    int columns = 5;
    int scale = 3;
    uint64_t seed = 0;
    CLI::Option* seed_option = nullptr;  // given or not
};

int run_show(const ShowOptions& o) {
    if (o.split != "train" && o.split != "test")
        throw Error(fmt::format("--split: unknown split '{}' (expected train or test)", o.split));
    if (o.count < 1 || o.count > 1000) throw Error(fmt::format("--count must be in [1, 1000], got {}", o.count));
    if (o.columns < 1) throw Error(fmt::format("--columns must be at least 1, got {}", o.columns));
    if (o.scale < 1 || o.scale > 16) throw Error(fmt::format("--scale must be in [1, 16], got {}", o.scale));
    require_distinct({{"--out", o.out}}, dataset_inputs(o.data_dir, o.dataset));
    require_writable(o.out, "--out");
    const Dataset ds = load_dataset(o.data_dir, o.dataset, o.split == "train" ? Split::Train : Split::Test);
    if (o.count > ds.n) throw Error(fmt::format("--count {} is more than the {} images of {}", o.count, ds.n, ds.name));
    const uint64_t seed = o.seed_option->count() > 0 ? o.seed : (static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}();

    // `count` distinct images: the start of a seeded permutation.
    const std::vector<int32_t> order = epoch_order(ds.n, seed, 0);
    const std::vector<std::string> names = class_names(o.dataset);
    std::vector<DigitTile> tiles;
    std::string picked;
    for (int i = 0; i < o.count; ++i) {
        const int index = order[i];
        const int label = ds.labels[index];
        std::vector<CaptionLine> caption{{fmt::format("Label: {}", label)}};
        if (label < static_cast<int>(names.size())) caption.push_back({names[label]});
        tiles.push_back(make_tile(ds, index, std::move(caption)));
        picked += fmt::format("{}{}", i ? ", " : "", index);
    }
    GridOptions g;
    g.columns = o.columns;
    g.scale = o.scale;
    g.title = fmt::format("{}: {} random images (seed {})", ds.name, o.count, seed);
    const Image picture = render_digit_grid(tiles, g);
    write_png(o.out, picture);
    fmt::print("Wrote {} ({}x{} pixels): {} images of {} (seed {}): {}\n", o.out, picture.width, picture.height, o.count,
               ds.name, seed, picked);
    return 0;
}

}  // namespace

void add_show_command(CLI::App& parent, std::vector<Command>& commands) {
    auto o = std::make_shared<ShowOptions>();
    CLI::App* cmd = parent.add_subcommand("show", "Write a PNG grid of random images from a data set with their labels");
    cmd->add_option("--out,-o", o->out, "PNG file to write")->capture_default_str();
    cmd->add_option("--data", o->data_dir, "Data folder holding <dataset>/ with the IDX files, or the folder of the IDX files itself")->capture_default_str();
    cmd->add_option("--dataset", o->dataset, "Data set: mnist or fashion")->capture_default_str();
    cmd->add_option("--split", o->split, "train or test")->capture_default_str();
    cmd->add_option("--count,-n", o->count, "How many images")->capture_default_str();
    cmd->add_option("--columns", o->columns, "Images per row")->capture_default_str();
    cmd->add_option("--scale", o->scale, "Each pixel becomes scale x scale pixels")->capture_default_str();
    o->seed_option = cmd->add_option("--seed", o->seed, "Seed for the choice of images (default: a fresh one, printed)")
                        ->check(unsigned_64());
    commands.push_back({cmd, [o] { return run_show(*o); }});
}

}  // namespace cumnist::cli
