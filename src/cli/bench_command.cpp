// `cumnist bench`: training throughput per (device, batch size) on real data after a warm-up, and
// inference throughput on the test set. The result table goes to stdout (and --json FILE);
// progress goes to stderr. GPU time comes from CUDA events, CPU time from steady_clock.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli_common.h"
#include "core/cuda_host.h"
#include "cumnist/bench.h"
#include "cumnist/data.h"
#include "cumnist/trainer.h"

namespace cumnist::cli {
namespace {

struct BenchOptions {
    std::string data_dir = default_data_dir();
    std::string dataset = "mnist";
    std::string device = "all";
    std::string batch_sizes = "32,128,256,1024";
    std::string json_out;
    std::string hidden = "512,256";
    std::string placement = "auto";
    DataPlacement data_placement = DataPlacement::Auto;
    int steps = 1000;      // timed CPU steps per configuration: the default run takes about a minute on 2 cores
    int gpu_steps = 2000;  // GPU steps are ~100x cheaper than CPU ones: more of them, for a stable total
    int warmup = 20;
    int threads = 0;
    int eval_batch = 1000;
    int eval_repeats = 5;
    int gemm_size = 1024;
    uint64_t seed = 42;
    bool no_graph = false;
    bool tf32 = false;
    bool no_gemm_floor = false;
    std::string model_text = "mlp";
    MlpConfig mlp;
    ModelSpec model;
};

struct TrainResult {
    Device device = Device::Cpu;
    int batch = 0, steps = 0;
    double seconds = 0;                   // all timed steps back to back
    double median_ms = 0, p90_ms = 0, mean_ms = 0;  // per-step times
    double samples_per_second = 0, epoch_seconds = 0, flops_per_step = 0, gflops = 0;
    double fma_fraction = std::nan("");   // CPU: GFLOP/s over the measured FMA peak
    double gemm_fraction = std::nan("");  // CPU: GFLOP/s over the best GEMM (1024³)
    double floor_ms = std::nan("");         // CPU: the step's GEMMs alone (measure_step_gemms), best run
    double floor_median_ms = std::nan("");  // and median run
    double floor_samples_per_second = std::nan("");  // at the median
    std::size_t graph_nodes = 0;  // GPU: nodes of the captured step (0: no graph)
    std::string graph_failure;    // GPU: why the capture failed (the run then used plain launches)
    DataPlacement placement = DataPlacement::Resident;  // as resolved by the trainer
};

struct InferenceResult {
    Device device = Device::Cpu;
    int samples = 0, batch = 0, repeats = 0;
    double seconds = 0;  // all repeats
    double samples_per_second = 0, gflops = 0;
};

std::vector<int> parse_batch_sizes(const std::string& text) {
    std::vector<int> sizes;
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
        if (item.empty() || used != item.size() || v <= 0 || v > (1 << 20))
            throw Error(fmt::format("--batch-sizes: '{}' is not a comma-separated list of positive sizes", text));
        sizes.push_back(static_cast<int>(v));
    }
    if (sizes.empty()) throw Error("--batch-sizes: empty list");
    return sizes;
}

// --device all: every usable device; auto: the GPU when usable, else the CPU; cpu; gpu.
std::vector<Device> choose_devices(const std::string& requested) {
    if (requested != "all") {
        if (requested != "auto" && requested != "cpu" && requested != "gpu" && requested != "cuda")
            throw Error(fmt::format("--device: unknown device '{}' (expected all, auto, cpu or gpu)", requested));
        return {choose_device(requested)};
    }
    const std::string why = cuda_unavailable_reason();
    if (!why.empty()) {
        fmt::print(stderr, "No usable GPU ({}): benchmarking the CPU only.\n", why);
        return {Device::Cpu};
    }
    return {Device::Cpu, Device::Cuda};
}

// 12345.6 -> "12,346"
std::string grouped(double value) {
    const long long v = std::llround(value);
    std::string digits = std::to_string(v < 0 ? -v : v), out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return v < 0 ? "-" + out : out;
}

std::vector<double> load_average() {
    std::ifstream in("/proc/loadavg");
    double a = 0, b = 0, c = 0;
    if (in >> a >> b >> c) return {a, b, c};
    return {};
}

// The share of all CPUs' time that other processes used over `seconds` while this one slept:
// (busy ticks) / (all ticks) between two readings of /proc/stat. Unlike the load average, which
// still counts a run that ended seconds ago, it says whether the cores are busy now. -1 when
// /proc/stat is not readable.
double cpu_busy_fraction(double seconds) {
    const auto ticks = [](uint64_t& busy, uint64_t& total) {
        std::ifstream in("/proc/stat");
        std::string cpu;
        uint64_t v[8] = {};
        if (!(in >> cpu) || cpu != "cpu") return false;
        for (uint64_t& x : v)
            if (!(in >> x)) return false;
        total = 0;
        for (uint64_t x : v) total += x;
        busy = total - v[3] - v[4];  // all but idle and iowait
        return true;
    };
    uint64_t busy0 = 0, total0 = 0, busy1 = 0, total1 = 0;
    if (!ticks(busy0, total0)) return -1.0;
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    if (!ticks(busy1, total1) || total1 <= total0) return -1.0;
    return static_cast<double>(busy1 - busy0) / static_cast<double>(total1 - total0);
}

// Progress on stderr: on a terminal a "running …" line redrawn in place, and, everywhere, one line
// per finished configuration.
class Progress {
public:
    explicit Progress(int n_configs) : m_total(n_configs), m_tty(::isatty(STDERR_FILENO) != 0) {}
    void running(const std::string& what, int step = -1, int n_steps = 0) {
        if (!m_tty) return;
        const auto now = std::chrono::steady_clock::now();
        if (step >= 0 && step != n_steps && now - m_last < std::chrono::milliseconds(100)) return;
        m_last = now;
        std::string line = fmt::format("\r[{}/{}] running {}", m_done + 1, m_total, what);
        if (step >= 0) line += fmt::format(": step {}/{}", step, n_steps);
        fmt::print(stderr, "{} …\x1b[K", line);
        std::fflush(stderr);
    }
    void finished(const std::string& line) {
        ++m_done;
        fmt::print(stderr, "{}[{}/{}] {}\n", m_tty ? "\r\x1b[K" : "", m_done, m_total, line);
        std::fflush(stderr);
    }

private:
    int m_total, m_done = 0;
    bool m_tty;
    std::chrono::steady_clock::time_point m_last{};
};

TrainResult bench_training(const BenchOptions& o, const OptimizerConfig& opt, const Dataset& train, Device device,
                           int batch, const FmaPeak& fma, const GemmPeak& gemm, Progress& progress) {
    TrainConfig config;
    config.device = device;
    config.batch = batch;
    config.eval_batch = 1;  // the workspace is sized for `batch`; no evaluation here
    config.seed = o.seed;
    config.use_graph = !o.no_graph;
    config.tf32 = o.tf32;
    config.placement = o.data_placement;
    const bool gpu = device == Device::Cuda;
    const int steps = gpu ? o.gpu_steps : o.steps;
    const std::string what = fmt::format("{} batch {}", to_string(device), batch);

    Trainer trainer(o.model, opt, config, train);
    progress.running(what + ": warm-up");
    trainer.train_steps(o.warmup);  // on the GPU the first step also captures the CUDA Graph
    trainer.synchronize();

    TrainResult r;
    r.device = device;
    r.batch = batch;
    r.steps = steps;
    r.placement = trainer.placement();
    std::vector<double> step_ms;
    step_ms.reserve(static_cast<std::size_t>(steps));
    if (gpu) {
        // Per-step latency: events around each step, waiting for each.
        cuda::StreamTimer timer;
        for (int s = 0; s < steps; ++s) {
            timer.start();
            trainer.train_steps(1);
            timer.stop();
            step_ms.push_back(timer.elapsed_ms());
            progress.running(what, s + 1, 2 * steps);
        }
        // Throughput: the same number of steps queued back to back, one pair of events around them.
        progress.running(what + ": back to back", steps, 2 * steps);
        trainer.synchronize();
        timer.start();
        trainer.train_steps(steps);
        timer.stop();
        r.seconds = timer.elapsed_ms() / 1e3;
        r.graph_nodes = trainer.graph_nodes();
        r.graph_failure = trainer.graph_failure();
    } else {
        // On the CPU a step ends when train_steps returns: the per-step times add up to the
        // back-to-back time (the clock reads and progress between steps are left out).
        for (int s = 0; s < steps; ++s) {
            const auto t0 = std::chrono::steady_clock::now();
            trainer.train_steps(1);
            const auto t1 = std::chrono::steady_clock::now();
            step_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
            r.seconds += std::chrono::duration<double>(t1 - t0).count();
            progress.running(what, s + 1, steps);
        }
    }
    r.median_ms = quantile(step_ms, 0.5);
    r.p90_ms = quantile(step_ms, 0.9);
    double sum = 0.0;
    for (double ms : step_ms) sum += ms;
    r.mean_ms = sum / steps;
    r.samples_per_second = static_cast<double>(steps) * batch / r.seconds;
    r.epoch_seconds = train.n / r.samples_per_second;
    r.flops_per_step = training_step_flops(o.model, batch);
    r.gflops = r.flops_per_step * steps / r.seconds / 1e9;
    if (!gpu && fma.gflops > 0) r.fma_fraction = r.gflops / fma.gflops;
    if (!gpu && gemm.gflops > 0) r.gemm_fraction = r.gflops / gemm.gflops;
    const bool dense_only = std::none_of(o.model.layers.begin(), o.model.layers.end(),
                                         [](const LayerSpec& l) { return l.kind == LayerKind::Conv2D; });
    if (!gpu && !o.no_gemm_floor && dense_only) {  // (a convolution's step is not its GEMMs)
        progress.running(what + ": the step's GEMMs alone");
        const GemmFloor floor = measure_step_gemms(o.model, batch);
        r.floor_ms = floor.seconds_per_step * 1e3;
        r.floor_median_ms = floor.median_seconds * 1e3;
        r.floor_samples_per_second = batch / r.floor_median_ms * 1e3;
    }
    progress.finished(fmt::format("{:<4} batch {:>5}: {:>9} samples/s, {:.3f} ms/step (p90 {:.3f}), {:.1f} GFLOP/s",
                                  to_string(device), batch, grouped(r.samples_per_second), r.median_ms, r.p90_ms,
                                  r.gflops));
    return r;
}

InferenceResult bench_inference(const BenchOptions& o, const OptimizerConfig& opt, const Dataset& train,
                                 const Dataset& test, Device device, Progress& progress) {
    TrainConfig config;
    config.device = device;
    config.batch = 1;
    config.eval_batch = o.eval_batch;
    config.seed = o.seed;
    const std::string what = fmt::format("{} inference", to_string(device));
    progress.running(what);
    Trainer trainer(o.model, opt, config, train);  // untrained weights: the speed does not depend on them
    const ResidentData data(test, device);
    trainer.evaluate(data);  // warm-up
    trainer.synchronize();

    InferenceResult r;
    r.device = device;
    r.samples = test.n;
    r.batch = std::min(o.eval_batch, test.n);
    r.repeats = o.eval_repeats;
    if (device == Device::Cuda) {
        cuda::StreamTimer timer;
        timer.start();
        for (int i = 0; i < o.eval_repeats; ++i) trainer.evaluate(data);
        timer.stop();
        r.seconds = timer.elapsed_ms() / 1e3;
    } else {
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < o.eval_repeats; ++i) trainer.evaluate(data);
        r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    r.samples_per_second = static_cast<double>(r.samples) * r.repeats / r.seconds;
    r.gflops = inference_flops(o.model, r.samples) * r.repeats / r.seconds / 1e9;
    progress.finished(fmt::format("{:<4} inference: {:>9} samples/s ({} test images, batch {}), {:.1f} GFLOP/s",
                                  to_string(device), grouped(r.samples_per_second), r.samples, r.batch, r.gflops));
    return r;
}

nlohmann::json to_json(const TrainResult& r) {
    nlohmann::json j = {{"device", to_string(r.device)},
                        {"batch", r.batch},
                        {"steps", r.steps},
                        {"seconds", r.seconds},
                        {"samples_per_second", r.samples_per_second},
                        {"ms_per_step_median", r.median_ms},
                        {"ms_per_step_p90", r.p90_ms},
                        {"ms_per_step_mean", r.mean_ms},
                        {"epoch_seconds", r.epoch_seconds},
                        {"flops_per_step", r.flops_per_step},
                        {"gflops", r.gflops},
                        {"data_placement", to_string(r.placement)}};
    const auto number_or_null = [](double v) { return std::isnan(v) ? nlohmann::json() : nlohmann::json(v); };
    if (r.device == Device::Cuda) {
        j["graph_nodes"] = r.graph_nodes;
        j["graph_failure"] = r.graph_failure.empty() ? nlohmann::json() : nlohmann::json(r.graph_failure);
    }
    j["fma_peak_fraction"] = number_or_null(r.fma_fraction);
    j["gemm_peak_fraction"] = number_or_null(r.gemm_fraction);
    j["gemm_floor_ms_per_step"] = number_or_null(r.floor_ms);
    j["gemm_floor_ms_per_step_median"] = number_or_null(r.floor_median_ms);
    j["gemm_floor_samples_per_second"] = number_or_null(r.floor_samples_per_second);
    return j;
}

nlohmann::json to_json(const InferenceResult& r) {
    return {{"device", to_string(r.device)},
            {"samples", r.samples},
            {"batch", r.batch},
            {"repeats", r.repeats},
            {"seconds", r.seconds},
            {"samples_per_second", r.samples_per_second},
            {"gflops", r.gflops}};
}

// "per training sample: conv2d 22.9 MFLOP (91 %), dense 2.4 MFLOP (9 %)": the multiply-adds of
// each kind of layer with parameters, ×2 for FLOPs, ×3 for a training step (forward, dW, dX; the
// first layer computes no dX).
std::string flops_by_kind(const ModelSpec& spec) {
    const std::vector<double> macs = layer_macs(spec);
    double conv = 0.0, dense = 0.0;
    std::size_t p = 0;
    for (const LayerSpec& l : spec.layers) {
        if (l.kind != LayerKind::Dense && l.kind != LayerKind::Conv2D) continue;
        const double flops = 2.0 * macs[p] * (p == 0 ? 2.0 : 3.0);
        (l.kind == LayerKind::Conv2D ? conv : dense) += flops;
        ++p;
    }
    const double total = conv + dense;
    std::string out = "per training sample:";
    if (conv > 0) out += fmt::format(" conv2d {:.1f} MFLOP ({:.0f} %),", conv / 1e6, 100.0 * conv / total);
    out += fmt::format(" dense {:.2f} MFLOP ({:.0f} %)", dense / 1e6, 100.0 * dense / total);
    return out;
}

int run_bench(BenchOptions& o) {
    if (o.steps <= 0) throw Error(fmt::format("--steps must be at least 1, got {}", o.steps));
    if (o.gpu_steps <= 0) throw Error(fmt::format("--gpu-steps must be at least 1, got {}", o.gpu_steps));
    if (o.warmup < 0) throw Error(fmt::format("--warmup must be 0 or more, got {}", o.warmup));
    if (o.eval_batch <= 0) throw Error(fmt::format("--eval-batch must be at least 1, got {}", o.eval_batch));
    if (o.eval_repeats < 0) throw Error(fmt::format("--eval-repeats must be 0 (skip) or more, got {}", o.eval_repeats));
    if (o.gemm_size < 0) throw Error(fmt::format("--gemm-size must be 0 (skip) or more, got {}", o.gemm_size));
    if (o.gemm_size > 0) {
        // Three n x n float matrices; refused up front when they would not fit in half the memory.
        const double bytes = 3.0 * 4.0 * static_cast<double>(o.gemm_size) * static_cast<double>(o.gemm_size);
        const double memory = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
        if (memory > 0 && bytes > memory / 2)
            throw Error(fmt::format("--gemm-size {} needs three {}x{} float matrices, {:.1f} GiB, more than half of "
                                    "this machine's {:.1f} GiB of memory",
                                    o.gemm_size, o.gemm_size, o.gemm_size, bytes / (1 << 30), memory / (1 << 30)));
    }
    const std::vector<int> batches = parse_batch_sizes(o.batch_sizes);
    if (!o.json_out.empty()) require_writable(o.json_out, "--json");  // fail now, not after the whole run
    require_distinct({{"--json", o.json_out}}, dataset_inputs(o.data_dir, o.dataset));
    o.mlp.hidden = parse_hidden(o.hidden);
    o.mlp.validate();
    (void)parse_model(o.model_text, Shape{1, 28, 28}, 10, o.mlp);  // a bad --model fails before the data is read
    o.data_placement = parse_data_placement(o.placement);
    OptimizerConfig opt;  // Adam, lr 1e-3, β 0.9/0.999, ε 1e-7: the reference configuration
    set_threads(o.threads);
    const std::vector<Device> devices = choose_devices(o.device);

    const Dataset train = load_dataset(o.data_dir, o.dataset, Split::Train);
    const Dataset test = load_dataset(o.data_dir, o.dataset, Split::Test);
    o.model = parse_model(o.model_text, Shape{1, train.rows, train.cols}, 10, o.mlp);
    for (int b : batches)
        if (b > train.n) throw Error(fmt::format("--batch-sizes: {} is larger than the training set ({})", b, train.n));
    if (test.features() != train.features())
        throw Error(fmt::format("test images are {}x{}, training images {}x{}", test.rows, test.cols, train.rows,
                                train.cols));

    const bool has_cpu = std::find(devices.begin(), devices.end(), Device::Cpu) != devices.end();
    const bool has_gpu = std::find(devices.begin(), devices.end(), Device::Cuda) != devices.end();
    const std::vector<double> load = load_average();
    const double busy = cpu_busy_fraction(0.5);
    const int threads = omp_get_max_threads();
    fmt::print("cumnist bench: {} ({} parameters), {}\n", o.model.describe(),
               grouped(static_cast<double>(parameter_count(o.model))), opt.describe());
    fmt::print("  data   {}: {} training, {} test images from {}\n", o.dataset, train.n, test.n,
               dataset_folder(o.data_dir, o.dataset));
    fmt::print("  flops  {}\n", flops_by_kind(o.model));
    fmt::print("  steps  {} warm-up, then {} timed per configuration{}\n", o.warmup, o.steps,
               has_gpu ? fmt::format(" ({} on the GPU)", o.gpu_steps) : "");
    fmt::print("  cpu    {}, {}{}\n", device_name(Device::Cpu), count_of(threads, "thread"),
               busy < 0 ? "" : fmt::format(", {:.0f} % of the CPUs busy with other work at start", 100.0 * busy));
    if (busy > 0.25)
        fmt::print(stderr,
                   "Warning: the machine is busy ({:.0f} % of its {} cores in use by other processes): CPU numbers "
                   "will be low and noisy.\n",
                   100.0 * busy, omp_get_num_procs());
    if (has_gpu)
        fmt::print("  gpu    {}, {}{}, data placement {}\n", device_name(Device::Cuda),
                   o.no_graph ? "no graph" : "CUDA Graph", o.tf32 ? ", TF32" : ", FP32", o.placement);
    std::fflush(stdout);

    const int n_devices = static_cast<int>(devices.size());
    const int n_configs = n_devices * static_cast<int>(batches.size()) + (o.eval_repeats > 0 ? n_devices : 0) +
                          (has_cpu ? 1 : 0) + (has_cpu && o.gemm_size > 0 ? 1 : 0);
    Progress progress(n_configs);
    FmaPeak fma;
    GemmPeak gemm;
    if (has_cpu) {
        progress.running("FMA peak");
        fma = measure_fma_peak();
        progress.finished(fmt::format("cpu  FMA peak: {:.1f} GFLOP/s ({} FMA on registers, {}, summed)",
                                      fma.gflops, fma.unit, count_of(fma.threads, "thread")));
    }
    if (has_cpu && o.gemm_size > 0) {
        progress.running(fmt::format("GEMM {}³", o.gemm_size));
        gemm = measure_gemm_peak(o.gemm_size, 10);
        progress.finished(fmt::format("cpu  GEMM peak: {:.1f} GFLOP/s ({}x{}x{} {}, {}, best of {} per transpose "
                                      "case), {:.0f}% of the FMA peak",
                                      gemm.gflops, gemm.size, gemm.size, gemm.size, gemm.transposes,
                                      count_of(gemm.threads, "thread"),
                                      gemm.repeats, 100.0 * gemm.gflops / fma.gflops));
    }
    std::vector<TrainResult> results;
    std::vector<InferenceResult> inference;
    for (Device device : devices) {
        for (int b : batches) results.push_back(bench_training(o, opt, train, device, b, fma, gemm, progress));
        if (o.eval_repeats > 0) inference.push_back(bench_inference(o, opt, train, test, device, progress));
    }

    // The table.
    fmt::print("\nTraining ({} timed steps{} after {} warm-up; samples/s from all timed steps back to back)\n", o.steps,
               has_gpu ? fmt::format(", {} on the GPU,", o.gpu_steps) : "", o.warmup);
    const auto percent = [](double fraction) { return std::isnan(fraction) ? std::string("-") : fmt::format("{:.0f}%", 100.0 * fraction); };
    fmt::print("{:<6} {:>6} {:>11} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>11} {:>8}\n", "device", "batch", "samples/s",
               "ms/step", "p90 ms", "s/epoch", "GFLOP/s", "of FMA", "of GEMM", "GEMM floor", "of floor");
    for (const TrainResult& r : results)
        fmt::print("{:<6} {:>6} {:>11} {:>9.3f} {:>9.3f} {:>8.2f} {:>8.1f} {:>7} {:>7} {:>11} {:>8}\n",
                   to_string(r.device), r.batch, grouped(r.samples_per_second), r.median_ms, r.p90_ms, r.epoch_seconds,
                   r.gflops, percent(r.fma_fraction), percent(r.gemm_fraction),
                   std::isnan(r.floor_samples_per_second) ? "-" : grouped(r.floor_samples_per_second),
                   percent(r.floor_median_ms / r.median_ms));
    fmt::print("ms/step: median and 90th percentile of single steps. s/epoch: {} samples at that rate.\n", train.n);
    if (fma.gflops > 0)
        fmt::print("of FMA: GFLOP/s over the FMA peak ({:.1f} GFLOP/s, {}, {}).\n", fma.gflops, fma.unit,
                   count_of(fma.threads, "thread"));
    if (gemm.gflops > 0)
        fmt::print("of GEMM: GFLOP/s over the best GEMM ({:.1f} GFLOP/s, {}³ {} through {}).\n", gemm.gflops,
                   gemm.size, gemm.transposes, cpu_gemm_library());
    if (has_cpu && !o.no_gemm_floor)
        fmt::print("GEMM floor: samples/s if a CPU step were only its GEMMs (the same shapes timed alone, median "
                   "run); of floor: that median time over the median ms/step.\n");
    for (const TrainResult& r : results)
        if (r.graph_nodes > 0) {
            fmt::print("CUDA Graph: {} nodes per training step\n", r.graph_nodes);
            break;
        }
    for (const TrainResult& r : results)
        if (!r.graph_failure.empty()) {
            fmt::print("Warning: {} (batch {}); that configuration ran with plain launches.\n", r.graph_failure,
                       r.batch);
        }
    if (!inference.empty()) {
        fmt::print("\nInference (the {} test images in batches of {}, {} pass{})\n", test.n, inference.front().batch,
                   o.eval_repeats, o.eval_repeats == 1 ? "" : "es");
        fmt::print("{:<6} {:>11} {:>10} {:>9}\n", "device", "samples/s", "ms/pass", "GFLOP/s");
        for (const InferenceResult& r : inference)
            fmt::print("{:<6} {:>11} {:>10.2f} {:>9.1f}\n", to_string(r.device), grouped(r.samples_per_second),
                       r.seconds / r.repeats * 1e3, r.gflops);
    }
    std::fflush(stdout);

    if (!o.json_out.empty()) {
        nlohmann::json j;
        j["tool"] = "cumnist";
        j["machine"] = {{"cpu", device_name(Device::Cpu)}, {"cores", omp_get_num_procs()}, {"threads", threads},
                        {"load_average_start", load}, {"load_average_end", load_average()},
                        {"cpu_busy_start", busy < 0 ? nlohmann::json() : nlohmann::json(busy)}};
        j["machine"]["gpu"] = has_gpu ? nlohmann::json(device_name(Device::Cuda)) : nlohmann::json();
        j["model"] = o.model.describe();
        j["parameters"] = parameter_count(o.model);
        j["optimizer"] = opt.describe();
        j["dataset"] = o.dataset;
        j["train_samples"] = train.n;
        j["test_samples"] = test.n;
        j["warmup"] = o.warmup;
        j["steps"] = o.steps;
        if (has_gpu) j["gpu"] = {{"steps", o.gpu_steps}, {"cuda_graph", !o.no_graph}, {"tf32", o.tf32}};
        if (fma.gflops > 0) j["fma_peak"] = {{"gflops", fma.gflops}, {"unit", fma.unit}, {"threads", fma.threads}};
        if (gemm.gflops > 0)
            j["gemm_peak"] = {{"gflops", gemm.gflops}, {"size", gemm.size}, {"repeats", gemm.repeats},
                              {"threads", gemm.threads}, {"transposes", gemm.transposes},
                              {"library", cpu_gemm_library()}};
        j["training"] = nlohmann::json::array();
        for (const TrainResult& r : results) j["training"].push_back(to_json(r));
        j["inference"] = nlohmann::json::array();
        for (const InferenceResult& r : inference) j["inference"].push_back(to_json(r));
        write_file_atomically(o.json_out, j.dump(2) + "\n");
        fmt::print(stderr, "Wrote {}\n", o.json_out);
    }
    return 0;
}

}  // namespace

void add_bench_command(CLI::App& parent, std::vector<Command>& commands) {
    auto o = std::make_shared<BenchOptions>();
    CLI::App* bench = parent.add_subcommand(
        "bench", "Measure training throughput per device and batch size, and inference throughput (table on stdout, "
                 "progress on stderr)");
    bench->add_option("--device", o->device, "all (every usable device), auto (the GPU when usable), cpu or gpu")
        ->capture_default_str();
    bench->add_option("--batch-sizes", o->batch_sizes, "Batch sizes, comma separated")->capture_default_str();
    bench->add_option("--steps", o->steps, "Timed training steps per CPU configuration")->capture_default_str();
    bench->add_option("--gpu-steps", o->gpu_steps, "Timed training steps per configuration on the GPU")
        ->capture_default_str();
    bench->add_option("--warmup", o->warmup, "Untimed training steps before timing")->capture_default_str();
    bench->add_option("--threads", o->threads, "CPU threads (0: all cores)")->capture_default_str();
    bench->add_option("--json", o->json_out, "Also write the results to this file as JSON");
    bench->add_option("--data", o->data_dir, "Data folder holding <dataset>/ with the IDX files, or the folder of the IDX files itself")
        ->capture_default_str();
    bench->add_option("--dataset", o->dataset, "Data set: mnist or fashion")->capture_default_str();
    bench->add_option("--eval-batch", o->eval_batch, "Batch size for inference")->capture_default_str();
    bench->add_option("--eval-repeats", o->eval_repeats, "Timed passes over the test set (0: skip inference)")
        ->capture_default_str();
    bench->add_option("--gemm-size", o->gemm_size, "Matrix size for the CPU GEMM peak (0: skip)")
        ->capture_default_str();
    bench->add_option("--model", o->model_text, model_help())->capture_default_str();
    bench->add_option("--hidden", o->hidden, "MLP: hidden layer sizes, comma separated (or 'none')")->capture_default_str();
    bench->add_option("--dropout", o->mlp.dropout, "MLP: dropout rate after each hidden layer")->capture_default_str();
    bench->add_option("--seed", o->seed, "Seed for initialisation and dropout")->check(unsigned_64())->capture_default_str();
    bench->add_flag("--no-gemm-floor", o->no_gemm_floor, "CPU: skip timing each step's GEMMs alone");
    bench->add_flag("--no-graph", o->no_graph,
                    "GPU: launch the step's kernels one by one instead of replaying a CUDA Graph");
    bench->add_flag("--tf32", o->tf32, "GPU: allow TF32 tensor-core GEMMs");
    bench->add_option("--data-placement", o->placement,
                      "Training data: auto, resident (on the device) or stream (batches copied in as needed)")
        ->capture_default_str();
    commands.push_back({bench, [o] { return run_bench(*o); }});
}

}  // namespace cumnist::cli
