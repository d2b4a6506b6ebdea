// Helpers shared by the cumnist subcommands: parsing option values, choosing the device, threads
// and durations. Every subcommand registers itself through one add_*_command function; main.cpp
// runs the one the user chose.
#pragma once

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "cumnist/data.h"
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

// Resolves --device (auto | cpu | gpu): auto prefers a usable GPU and prints to `out` why when it
// falls back.
Device choose_device(const std::string& requested, std::FILE* out = stdout);

// OpenMP threads of the calling thread (0: all cores; more than the cores is clamped with a notice
// on `err`). One pool: oneDNN runs on the same OpenMP runtime as the CPU backend's loops.
void set_threads(int threads, std::FILE* err = stderr);

// Runs `command` and turns what it throws into one "cumnist: error: ..." line on `err` and exit
// status 1 (std::bad_alloc as "out of memory"); else returns the command's status.
int run_reporting_errors(const std::function<int()>& command, std::FILE* err = stderr);

// SIGINT and SIGTERM reach no thread that computes: main calls start_signal_thread() first, which
// blocks both (in main and so in every thread started after it) and starts one thread that takes
// them with sigwait(). Until a command arms it, a signal gets its default action (or is ignored,
// when the process was started with it ignored).
void start_signal_thread();
// Arms the signal thread. Without `forward`, as train handles the signals: the first one sets
// stop_requested() (a run stops after the step in flight and saves) and remembers which signal it
// was; a second one gets the default action, ending the process at once. With `forward`, every
// signal sets stop_requested() and is passed to forward(signal), which runs on the signal thread.
using SignalForward = void (*)(int);
void install_stop_handlers(SignalForward forward = nullptr);
extern std::atomic<bool> g_stop_requested;
int stop_signal();  // the signal that set g_stop_requested (0: none)
// What the first signal does (callable from a signal handler too).
void request_stop(int signal_number) noexcept;

// A data set loaded once and shared, read-only, by the runs made in this process (a sweep's trials).
struct LoadedData {
    std::string data_dir, dataset;  // as --data and --dataset gave them
    Dataset train, test;
};

// `cumnist train ARGS` (ARGS without "cumnist train") in this process: on `data` when the run asks
// for that data (else it loads its own), with what the command prints to stdout and stderr going
// to `log`, and its threads set on the calling thread only. Returns the command's exit status: an
// error is written to `log` as "cumnist: error: ..." with status 1, or 2 for a bad command line.
// Handles no signal itself: a caller that wants a run to stop and save on SIGINT/SIGTERM calls
// install_stop_handlers() (the run then returns 128 + the signal). Runs on several threads at once
// do not interfere (each its own model, trainer, output and checkpoints) on the CPU; on the GPU
// each thread has its own compute stream.
int train_in_process(const std::vector<std::string>& args, const LoadedData& data, std::FILE* log);

// "850ms", "14.2s", "3m07s"
// "1 thread", "2 threads": a count and its noun, plural unless the count is 1.
std::string count_of(long long n, const std::string& noun);

std::string format_duration(double seconds);

}  // namespace cumnist::cli
