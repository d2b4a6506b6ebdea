// The cumnist command line: registers the subcommands, runs the chosen one, and turns any error
// into one line on stderr and a non-zero exit.
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>

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
    int status = 0;
    try {
        for (const cli::Command& c : commands)
            if (c.app->parsed()) {
                status = c.run();
                break;
            }
    } catch (const std::exception& e) {
        std::fflush(stdout);
        fmt::print(stderr, "cumnist: error: {}\n", e.what());
        return 1;
    }
    // Output redirected to a file on a full disk is lost silently unless the flush is checked.
    errno = 0;
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
        const int err = errno;
        fmt::print(stderr, "cumnist: error: cannot write to standard output: {}\n",
                   err != 0 ? std::strerror(err) : "an earlier write failed");
        return status != 0 ? status : 1;
    }
    return status;
}
