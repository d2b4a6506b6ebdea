// The cumnist command line: registers the subcommands, runs the chosen one, and turns any error
// into one line on stderr and a non-zero exit.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "cli_common.h"
#include "cumnist/error.h"

int main(int argc, char** argv) {
    using namespace cumnist;
    CLI::App app{"cumnist: train MNIST-format image classifiers on an NVIDIA GPU (CUDA + cuBLAS) or the CPU"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "cumnist 0.1.0");

    std::vector<cli::Command> commands;
    cli::add_train_command(app, commands);
    cli::add_selftest_command(app, commands);
    cli::add_eval_command(app, commands);
    cli::add_bench_command(app, commands);
    cli::add_predict_command(app, commands);
    cli::add_show_command(app, commands);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    try {
        for (const cli::Command& c : commands)
            if (c.app->parsed()) return c.run();
    } catch (const std::exception& e) {
        std::fflush(stdout);
        fmt::print(stderr, "cumnist: error: {}\n", e.what());
        return 1;
    }
    return 0;
}
