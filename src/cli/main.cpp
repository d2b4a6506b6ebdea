// The cumnist command line: registers the subcommands, runs the chosen one, and turns any error
// into one line on stderr and a non-zero exit.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

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

// CLI11's messages, in the words of the rest of cumnist where they are not clear already.
std::string readable(const std::string& message) {
    // "--epochs: At Most 1 required but received 2"
    const std::string repeated = ": At Most 1 required but received ";
    const std::size_t at = message.find(repeated);
    if (at != std::string::npos && message.rfind("--", 0) == 0)
        return fmt::format("{} is given {} times; give it once", message.substr(0, at), message.substr(at + repeated.size()));
    return message;
}

}  // namespace

int main(int argc, char** argv) {
    using namespace cumnist;
    bound_openmp_spinning(argv);
    cli::start_signal_thread();  // before any other thread exists: every thread then has SIGINT and SIGTERM blocked
    CLI::App app{"cumnist: train MNIST-format image classifiers on an NVIDIA GPU (CUDA + cuBLAS) or the CPU"};
    app.name("cumnist");
    app.require_subcommand(1);
    app.set_version_flag("--version", "cumnist 0.1.0");

    std::vector<cli::Command> commands;
    cli::add_train_command(app, commands);
    cli::add_selftest_command(app, commands);
    cli::add_eval_command(app, commands);
    cli::add_bench_command(app, commands);
    cli::add_predict_command(app, commands);
    cli::add_show_command(app, commands);
    cli::add_export_command(app, commands);
    cli::add_sweep_command(app, commands);

    // Usage errors: one "cumnist: error: ..." line and exit status 2, as every other error but with
    // the status that tells a usage error apart; --help and --version print and exit 0; no
    // arguments at all print the usage.
    if (argc <= 1) {
        fmt::print(stderr, "{}", app.help());
        return 2;
    }
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::vector<std::string> names;
        for (const cli::Command& c : commands) names.push_back(c.app->get_name());
        const std::string first = argv[1];
        const bool known = std::find(names.begin(), names.end(), first) != names.end();
        if (!known && !first.empty() && first[0] != '-')
            fmt::print(stderr, "cumnist: error: unknown command '{}' (the commands: {}; see cumnist --help)\n", first,
                       fmt::join(names, ", "));
        else
            fmt::print(stderr, "cumnist: error: {} (see cumnist {}--help)\n", readable(e.what()), known ? first + " " : "");
        return 2;
    }
    int status = 0;
    for (const cli::Command& c : commands)
        if (c.app->parsed()) {
            status = cli::run_reporting_errors(c.run);
            break;
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
