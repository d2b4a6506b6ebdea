// The cumnist command line: registers the subcommands, runs the chosen one, and turns any error
// into one line on stderr and a non-zero exit.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cli_common.h"
#include "cumnist/error.h"

namespace {

// OpenMP threads (ours and oneDNN's share libgomp's pool) spin ~300,000 iterations at each barrier
// before they sleep. On an idle machine the spinning makes a step's ~20 small parallel regions
// cheap; on a busy one a spinning thread takes the core from the thread it is waiting for, and
// training collapses. Measured with `bench` at batch 32 on 2 cores beside two busy processes:
// 256-281 samples/s with the default, 1,085-2,767 with a 10,000-iteration spin; on the idle
// machine the two are within the run-to-run noise, while never spinning (OMP_WAIT_POLICY=PASSIVE)
// costs ~40 %. libgomp reads its environment when it is loaded, before main, so when the user has
// set neither variable: set the spin count and execute this program again.
void bound_openmp_spinning(char** argv) {
    if (std::getenv("GOMP_SPINCOUNT") != nullptr || std::getenv("OMP_WAIT_POLICY") != nullptr) return;
    if (setenv("GOMP_SPINCOUNT", "10000", 1) != 0) return;
    execv("/proc/self/exe", argv);  // returns only on failure: then run with libgomp's default
}

}  // namespace

int main(int argc, char** argv) {
    using namespace cumnist;
    bound_openmp_spinning(argv);
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
