// Helpers shared by the cumnist subcommands.
#include "cli_common.h"

#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <sstream>

#include "cumnist/error.h"

namespace cumnist::cli {

std::vector<int> parse_hidden(const std::string& text) {
    std::vector<int> sizes;
    if (text == "none") return sizes;
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ',')) {
        std::size_t used = 0;
        long v = 0;
        try {
            v = std::stol(item, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used != item.size() || item.empty())
            throw Error(fmt::format("--hidden: '{}' is not a comma-separated list of sizes (or 'none')", text));
        if (v <= 0 || v > 65536) throw Error(fmt::format("--hidden: layer size {} is outside [1, 65536]", v));
        sizes.push_back(static_cast<int>(v));
    }
    if (sizes.empty()) throw Error("--hidden: empty list (use 'none' for no hidden layer)");
    return sizes;
}

Activation parse_activation(const std::string& name) {
    if (name == "relu") return Activation::Relu;
    if (name == "sigmoid") return Activation::Sigmoid;
    if (name == "tanh") return Activation::Tanh;
    throw Error(fmt::format("--activation: unknown activation '{}' (expected relu, sigmoid or tanh)", name));
}

CLI::Validator unsigned_64() {
    return CLI::Validator(
        [](std::string& text) -> std::string {
            const bool digits = !text.empty() && text.size() <= 20 &&
                                std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
            if (digits) {
                errno = 0;
                (void)std::strtoull(text.c_str(), nullptr, 10);
                if (errno != ERANGE) return "";
            }
            return fmt::format("'{}' is not an integer in [0, 18446744073709551615]", text);
        },
        "UINT64");
}

std::string model_help() {
    return fmt::format(
        "Model: a preset, mlp (the MLP of --hidden, --activation, --dropout) or cnn ({}), or layers separated by "
        "commas: dense<units>, conv<filters>k<kernel>[s<stride>][same], pool<size>[s<stride>], flatten, "
        "dropout<rate>, relu, sigmoid, tanh, ending in dense10 (kernel, size and stride may be HxW, e.g. k3x5)",
        cnn_preset());
}

Device choose_device(const std::string& requested, std::FILE* out) {
    if (requested == "cpu") return Device::Cpu;
    if (requested != "auto" && requested != "gpu" && requested != "cuda")
        throw Error(fmt::format("--device: unknown device '{}' (expected auto, cpu or gpu)", requested));
    const std::string why = cuda_unavailable_reason();
    if (requested != "auto") {
        if (!why.empty()) throw Error(fmt::format("--device gpu: no usable GPU: {}", why));
        return Device::Cuda;
    }
    if (why.empty()) return Device::Cuda;
    fmt::print(out, "No usable GPU ({}); using the CPU.\n", why);
    return Device::Cpu;
}

void set_threads(int threads, std::FILE* err) {
    if (threads < 0) throw Error(fmt::format("--threads must be 0 (all cores) or positive, got {}", threads));
    // More threads than cores only makes them wait for each other at every barrier (and oneDNN
    // sizes per-thread buffers by the count): clamp to the cores this process may run on.
    const int cores = omp_get_num_procs();
    if (threads > cores)
        fmt::print(err, "--threads {}: this machine has {} core{} available; using {}.\n", threads, cores,
                   cores == 1 ? "" : "s", cores);
    omp_set_num_threads(threads > 0 ? std::min(threads, cores) : cores);
}

int run_reporting_errors(const std::function<int()>& command, std::FILE* err) {
    try {
        return command();
    } catch (const std::bad_alloc&) {
        std::fflush(stdout);
        fmt::print(err, "cumnist: error: out of memory: an allocation failed (a smaller batch, model or data set "
                        "needs less)\n");
    } catch (const std::exception& e) {
        std::fflush(stdout);
        fmt::print(err, "cumnist: error: {}\n", e.what());
    }
    return 1;
}

std::string count_of(long long n, const std::string& noun) { return fmt::format("{} {}{}", n, noun, n == 1 ? "" : "s"); }

std::string format_duration(double s) {
    if (s < 1.0) return fmt::format("{:.0f}ms", s * 1e3);
    if (s < 60.0) return fmt::format("{:.1f}s", s);
    return fmt::format("{}m{:02d}s", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
}

}  // namespace cumnist::cli
