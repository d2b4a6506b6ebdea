// Helpers shared by the cumnist subcommands: parsing option values, choosing the device, threads
// and durations. Every subcommand registers itself through one add_*_command function; main.cpp
// runs the one the user chose.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

#include "cumnist/device.h"
#include "cumnist/file_io.h"  // write_file_atomically, for the subcommands
#include "cumnist/model.h"

namespace cumnist::cli {

// A registered subcommand: its CLI11 app and what to run when it is chosen (returns the exit code).
struct Command {
    CLI::App* app = nullptr;
    std::function<int()> run;
};

void add_train_command(CLI::App& parent, std::vector<Command>& commands);
void add_selftest_command(CLI::App& parent, std::vector<Command>& commands);
void add_eval_command(CLI::App& parent, std::vector<Command>& commands);
void add_bench_command(CLI::App& parent, std::vector<Command>& commands);
void add_predict_command(CLI::App& parent, std::vector<Command>& commands);
void add_show_command(CLI::App& parent, std::vector<Command>& commands);
void add_export_command(CLI::App& parent, std::vector<Command>& commands);
void add_sweep_command(CLI::App& parent, std::vector<Command>& commands);

std::vector<int> parse_hidden(const std::string& text);  // "512,256" | "none"
Activation parse_activation(const std::string& name);     // "relu" | "sigmoid" | "tanh"

// Checks a seed as typed: decimal digits of an integer in [0, 2^64). (Converted by CLI11 alone,
// "-1" and "2^64" would wrap or saturate to 2^64 − 1 and "1e23" would be read as a float.)
CLI::Validator unsigned_64();

// The --model help text: the presets and the layer-string syntax (model.h).
std::string model_help();

// Resolves --device (auto | cpu | gpu): auto prefers a usable GPU and prints why when it falls back.
Device choose_device(const std::string& requested);

// OpenMP threads (0: all cores; more than the cores is clamped with a notice on stderr). One pool:
// oneDNN runs on the same OpenMP runtime as the CPU backend's loops.
void set_threads(int threads);

// "850ms", "14.2s", "3m07s"
// "1 thread", "2 threads": a count and its noun, plural unless the count is 1.
std::string count_of(long long n, const std::string& noun);

std::string format_duration(double seconds);

}  // namespace cumnist::cli
