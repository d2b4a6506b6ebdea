// `cumnist selftest`: checks the GPU backend on this machine against the CPU backend and prints a
// pass/fail table with the worst errors. Exit 0 when every check passes.
#include "cli_common.h"
#include "cumnist/selftest.h"

namespace cumnist::cli {

void add_selftest_command(CLI::App& parent, std::vector<Command>& commands) {
    CLI::App* app = parent.add_subcommand(
        "selftest", "Check every CUDA kernel, cuBLAS GEMM, GPU training and CUDA Graph replay against the CPU backend");
    commands.push_back({app, [] {
                            const std::string why = cuda_unavailable_reason();
                            if (!why.empty()) throw Error(fmt::format("selftest needs a usable GPU: {}", why));
                            fmt::print("cumnist selftest on {}\n\n", device_name(Device::Cuda));
                            const auto results = run_gpu_selftest();
                            fmt::print("{:<48} {:>6} {:>12} {:>14}  {}\n", "check", "result", "worst |err|",
                                       "err/allowed", "tolerance");
                            int failed = 0;
                            for (const SelftestResult& r : results) {
                                fmt::print("{:<48} {:>6} {:>12.3g} {:>14.3g}  {}\n", r.name, r.passed ? "PASS" : "FAIL",
                                           r.worst_abs, r.worst_error, r.tolerance);
                                if (!r.passed) {
                                    ++failed;
                                    fmt::print("    {}\n", r.detail);
                                }
                            }
                            fmt::print("\n{} of {} checks passed\n", results.size() - failed, results.size());
                            return failed == 0 ? 0 : 1;
                        }});
}

}  // namespace cumnist::cli
