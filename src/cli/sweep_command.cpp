// `cumnist sweep`: a hyperparameter search (sweep.h) over `cumnist train`. Each trial is a train run
// on a validation split: by default in this process, on the data set loaded once, and with
// --parallel K, K trials at a time on K threads (each with its own share of the CPU threads, or its
// own GPU stream); with --isolate, each trial is a child `cumnist train` process, so that even a
// crash is only that trial's. A trial that fails or diverges is recorded and the sweep goes on;
// every finished trial is appended to <out>/trials.jsonl (rewritten atomically), and the same
// command run again skips the trials already there. At the end: the trials ranked by the objective
// (validation accuracy or loss), the best one as a `cumnist train` command line, and its test
// accuracy, evaluated once, after the selection.
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "cli_common.h"
#include "cumnist/data.h"
#include "cumnist/error.h"
#include "cumnist/sweep.h"

extern char** environ;

namespace cumnist::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The most trials run at once (--parallel).
constexpr int kMaxParallel = 64;

// SIGINT and SIGTERM reach the sweep, which sets the stop flag of the trials running in process
// and passes the signal on to its child processes (--isolate trials and the final evaluation, each
// in its own process group, so that a Ctrl-C is delivered to it once): the trials save and stop,
// the sweep records nothing for them and stops too.
std::atomic<int> g_children[kMaxParallel] = {};  // the pid each worker waits for (0: none)
std::atomic<int> g_stop{0};
// Runs on the signal thread (install_stop_handlers), which has already set the trials' stop flag.
void forward_signal(int signal_number) {
    int none = 0;
    g_stop.compare_exchange_strong(none, signal_number);
    for (int k = 0; k < kMaxParallel; ++k)
        if (const int pid = g_children[k].load(); pid > 0) ::kill(pid, signal_number);
}

// A fixed set of worker threads that runs batches of jobs: the same threads for every rung, so that
// each keeps its OpenMP pool and, on the GPU, its one stream and handle (cuda_host.h).
class WorkerPool {
public:
    explicit WorkerPool(int workers) {
        try {
            for (int w = 0; w < workers; ++w) m_threads.emplace_back([this, w] { work(w); });
        } catch (...) {
            stop();  // the threads started so far
            throw;
        }
    }
    ~WorkerPool() { stop(); }
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    // Runs job(i, worker) for i in [0, n), each on one worker, and returns once all have finished;
    // rethrows the first exception a job threw (the jobs not started then are skipped).
    void run(int n, const std::function<void(int, int)>& job) {
        std::unique_lock<std::mutex> lock(m_mutex);
        m_job = &job;
        m_n = n;
        m_next = 0;
        m_running = 0;
        m_error = nullptr;
        m_wake.notify_all();
        m_done.wait(lock, [&] { return m_next >= m_n && m_running == 0; });
        m_job = nullptr;
        if (m_error) std::rethrow_exception(m_error);
    }

private:
    void stop() {
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            m_quit = true;
        }
        m_wake.notify_all();
        for (std::thread& t : m_threads) t.join();
        m_threads.clear();
    }

    void work(int worker) {
        std::unique_lock<std::mutex> lock(m_mutex);
        for (;;) {
            m_wake.wait(lock, [&] { return m_quit || (m_job != nullptr && m_next < m_n); });
            if (m_quit) return;
            const int i = m_next++;
            ++m_running;
            const std::function<void(int, int)>& job = *m_job;
            lock.unlock();
            std::exception_ptr error;
            try {
                job(i, worker);
            } catch (...) {
                error = std::current_exception();
            }
            lock.lock();
            --m_running;
            if (error && !m_error) m_error = error, m_next = m_n;
            if (m_next >= m_n && m_running == 0) m_done.notify_all();
        }
    }

    std::vector<std::thread> m_threads;
    std::mutex m_mutex;
    std::condition_variable m_wake, m_done;
    const std::function<void(int, int)>* m_job = nullptr;
    int m_n = 0, m_next = 0, m_running = 0;
    std::exception_ptr m_error;
    bool m_quit = false;
};

struct SweepOptions {
    std::string space_path;
    std::string out = "sweep";
    std::string strategy = "grid";
    std::string shard = "1/1";
    std::string data_dir = default_data_dir();
    std::string dataset = "mnist";
    std::string device = "auto";
    int trials = 20;
    int epochs = 5;
    int min_epochs = 1;  // halving: the first rung's epochs
    int eta = 3;         // halving: the fraction 1/eta of a rung goes on to eta times the epochs
    int threads = 0;
    int parallel = 1;             // trials at once
    bool isolate = false;         // each trial a child process
    std::string objective = "accuracy";
    bool objective_given = false;  // on the command line
    std::vector<std::string> params;  // --param NAME=VALUES
    double validation_split = 0.1;
    uint64_t seed = 0;
    bool list = false;
    std::vector<std::string> report;  // --report DIR...
    CLI::App* parent = nullptr;
};

// The flags `cumnist train` takes (without "--"), read from its command definition.
std::vector<std::string> train_flags(CLI::App& parent) {
    std::vector<std::string> flags;
    for (const CLI::Option* opt : parent.get_subcommand("train")->get_options())
        for (const std::string& name : opt->get_lnames()) flags.push_back(name);
    return flags;
}

// This executable, for the child processes.
std::string self_exe() {
    std::error_code ec;
    const fs::path p = fs::read_symlink("/proc/self/exe", ec);
    if (ec) throw Error(fmt::format("sweep: cannot find this executable (/proc/self/exe): {}", ec.message()));
    return p.string();
}

// Runs `args` with stdout and stderr into `log`; returns the exit status (128 + signal when killed).
// `slot`: where the signal thread finds the child's pid (one per trial running at once).
int run_child(const std::vector<std::string>& args, const std::string& log, int slot = 0) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    posix_spawnattr_setpgroup(&attr, 0);
    sigset_t defaults;
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGTERM);
    posix_spawnattr_setsigdefault(&attr, &defaults);  // not ignored, as a shell's background job would have them
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);  // not blocked, as every thread here has them (start_signal_thread)
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) throw Error(fmt::format("sweep: cannot start '{}': {}", args[0], std::strerror(rc)));
    g_children[slot].store(pid);
    if (const int s = g_stop.load(); s != 0) ::kill(pid, s);  // a signal that came while it was starting
    // Waited for without reaping it first: until the slot is cleared the signal thread may still
    // kill(pid), which must not reach another process given the same pid.
    siginfo_t ended {};
    while (::waitid(P_PID, static_cast<id_t>(pid), &ended, WEXITED | WNOWAIT) < 0)
        if (errno != EINTR) {
            g_children[slot].store(0);
            throw Error(fmt::format("sweep: waiting for a trial: {}", std::strerror(errno)));
        }
    g_children[slot].store(0);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) throw Error(fmt::format("sweep: waiting for a trial: {}", std::strerror(errno)));
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

std::string last_line_of(const std::string& path) {
    std::ifstream in(path);
    std::string line, last;
    while (std::getline(in, line))
        if (!line.empty()) last = line;
    return last;
}

// The per-epoch metrics a trial wrote (one JSON object per line).
json read_epochs(const std::string& path) {
    json epochs = json::array();
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line))
        if (!line.empty()) epochs.push_back(json::parse(line, nullptr, false));
    return epochs;
}

// A trial record's best value of the objective over its epochs (the highest validation accuracy, or
// the lowest validation loss) and the epoch it came in; epoch 0 when there is none (a failed trial).
struct Score {
    double value = 0.0;
    int epoch = 0;
};
Score best_of(const json& record, bool loss) {
    Score best;
    const char* key = loss ? "validation_loss" : "validation_accuracy";
    if (!record.contains("epochs") || !record["epochs"].is_array()) return best;
    for (const json& e : record["epochs"]) {
        if (!e.is_object() || !e.contains(key) || !e[key].is_number() || !e.contains("epoch") ||
            !e["epoch"].is_number_integer())
            continue;
        const double v = e[key].get<double>();
        if (!std::isfinite(v)) continue;
        if (best.epoch == 0 || (loss ? v < best.value : v > best.value)) best = {v, e["epoch"].get<int>()};
    }
    return best;
}

// What ranks and promotes trials: higher is better; a failed trial is below every finished one.
double objective(const json& record, bool loss) {
    const Score s = best_of(record, loss);
    if (record.value("status", std::string()) != "done" || s.epoch == 0) return -HUGE_VAL;
    return loss ? -s.value : s.value;
}

bool objective_is_loss(const std::string& name) {
    if (name != "accuracy" && name != "loss")
        throw Error(fmt::format("--objective: unknown objective '{}' (expected accuracy or loss)", name));
    return name == "loss";
}

std::string quoted_command(const std::vector<std::string>& args) {
    std::string out;
    for (const std::string& a : args) out += (out.empty() ? "" : " ") + shell_quote(a);
    return out;
}

// The ranking of `records` (one per trial and rung; each trial counts with its highest rung, a
// trial that went further above one stopped earlier, failed trials last) by the objective, the best
// trial as a `cumnist train` command line, and its best checkpoint evaluated once on the test set.
int report(const std::vector<json>& records, const SweepOptions& o, const std::string& exe) {
    // --report without --objective: the objective the sweep ran with, as its records say.
    std::string objective_name = o.objective;
    if (!o.objective_given && !records.empty())
        objective_name = records.front().value("objective", std::string("accuracy"));
    const bool loss = objective_is_loss(objective_name);
    std::map<std::pair<std::string, int>, const json*> last;  // (trial folder, trial): its highest rung
    for (const json& r : records) {
        const auto key = std::make_pair(r.value("dir", std::string()), r.at("trial").get<int>());
        if (!last.count(key) || last[key]->value("rung", 0) <= r.value("rung", 0)) last[key] = &r;
    }
    std::vector<const json*> ranked;
    for (const auto& [k, r] : last) ranked.push_back(r);
    std::stable_sort(ranked.begin(), ranked.end(), [&](const json* a, const json* b) {
        const bool da = a->at("status") == "done", db = b->at("status") == "done";
        if (da != db) return da;
        const int ra = a->value("rung", 0), rb = b->value("rung", 0);
        return ra != rb ? ra > rb : objective(*a, loss) > objective(*b, loss);
    });
    const char* const measure = loss ? "validation loss" : "validation accuracy";
    fmt::print("\nRank  Trial  {:>13}  Epoch  Arguments\n", loss ? "Val. loss" : "Val. accuracy");
    int rank = 0;
    for (const json* r : ranked) {
        ++rank;
        const Score score = best_of(*r, loss);
        if (r->at("status") == "done" && score.epoch > 0)
            fmt::print("{:>4}  {:>5}  {:>13.4f}  {:>5}  {}\n", rank, r->at("trial").get<int>() + 1, score.value,
                       score.epoch, r->at("arguments").get<std::string>());
        else
            fmt::print("{:>4}  {:>5}  {:>13}  {:>5}  {}  ({})\n", rank, r->at("trial").get<int>() + 1, "failed", "-",
                       r->at("arguments").get<std::string>(), r->value("error", ""));
    }
    if (ranked.empty() || objective(*ranked.front(), loss) == -HUGE_VAL) {
        fmt::print("No trial finished.\n");
        return 1;
    }
    const json& best = *ranked.front();
    const Score score = best_of(best, loss);
    fmt::print("\nBest: trial {}, {} {:.4f} after epoch {}. To train it:\n  {}\n", best.at("trial").get<int>() + 1,
               measure, score.value, score.epoch,
               best.value("command", std::string("cumnist train ") + best.at("arguments").get<std::string>()));
    // The test set, once, after the selection: the best trial's best checkpoint.
    const std::string dir = best.at("dir").get<std::string>();
    const std::string model = dir + "/best.safetensors", eval_log = dir + "/eval.log";
    const int status = run_child({exe, "eval", "--model", model, "--data", o.data_dir, "--dataset", o.dataset, "--device",
                                  o.device, "--threads", std::to_string(o.threads)},
                                 eval_log);
    std::ifstream in(eval_log);
    std::string line, test_line;
    while (std::getline(in, line))
        if (line.rfind("Test loss", 0) == 0) test_line = line;
    if (status == 128 + SIGINT || status == 128 + SIGTERM) {
        fmt::print("Interrupted while evaluating the best trial on the test set.\n");
        return status;
    }
    if (status != 0 || test_line.empty())
        throw Error(fmt::format("sweep: evaluating '{}' on the test set failed: {}", model, last_line_of(eval_log)));
    fmt::print("Its test set result (evaluated once, after the selection): {}\n", test_line);
    return 0;
}

// --report DIR...: the trials*.jsonl of the given sweep folders (the shards of one sweep) merged.
int run_report(const SweepOptions& o) {
    std::vector<json> records;
    std::size_t files = 0;
    for (const std::string& dir : o.report) {
        std::error_code ec;
        if (!fs::is_directory(dir, ec)) throw Error(fmt::format("--report: '{}' is not a sweep folder", dir));
        for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
            const std::string name = e.path().filename().string();
            if (name.rfind("trials", 0) != 0 || e.path().extension() != ".jsonl") continue;
            ++files;
            std::ifstream in(e.path());
            std::string line;
            while (std::getline(in, line)) {
                if (line.empty()) continue;
                json r = json::parse(line, nullptr, false);
                if (r.is_discarded() || !r.contains("trial") || !r.contains("status") || !r.contains("dir"))
                    throw Error(fmt::format("--report: '{}' holds a line that is not a trial record", e.path().string()));
                records.push_back(std::move(r));
            }
        }
    }
    if (files == 0) throw Error(fmt::format("--report: no trials*.jsonl in {}", fmt::join(o.report, ", ")));
    fmt::print("cumnist sweep --report: {} from {} file{}\n", count_of(static_cast<long long>(records.size()), "record"),
               files, files == 1 ? "" : "s");
    return report(records, o, self_exe());
}

int run_sweep(SweepOptions& o) {
    if (!o.report.empty()) return run_report(o);
    if (o.space_path.empty() && o.params.empty())
        throw Error("give a search space: --space FILE and/or --param NAME=VALUES (or --report DIR... to merge "
                    "finished sweeps)");
    const auto [shard, shards] = parse_shard(o.shard);
    const bool loss = objective_is_loss(o.objective);
    if (o.epochs < 1) throw Error(fmt::format("--epochs must be at least 1, got {}", o.epochs));
    if (!(o.validation_split > 0.0 && o.validation_split < 1.0))
        throw Error(fmt::format("--validation-split must be a fraction in (0, 1), got {}", o.validation_split));
    if (o.parallel < 1 || o.parallel > kMaxParallel)
        throw Error(fmt::format("--parallel must be in [1, {}], got {}", kMaxParallel, o.parallel));
    if (o.threads < 0) throw Error(fmt::format("--threads must be 0 (all cores) or positive, got {}", o.threads));
    json space_json = json::object();
    if (!o.space_path.empty()) {
        std::ifstream in(o.space_path);
        if (!in) throw Error(fmt::format("--space: cannot open '{}': {}", o.space_path, std::strerror(errno)));
        std::stringstream text;
        text << in.rdbuf();
        space_json = json::parse(text.str(), nullptr, false);
        if (space_json.is_discarded()) throw Error(fmt::format("--space '{}' is not valid JSON", o.space_path));
        if (!space_json.is_object())
            throw Error(fmt::format("--space '{}' is not a JSON object of train flags", o.space_path));
    }
    for (const std::string& text : o.params) {
        auto [name, value] = parse_param(text);
        if (space_json.contains(name))
            throw Error(fmt::format("--param '{}': '{}' is {}", text, name,
                                    o.space_path.empty() ? "given twice" : "in --space already"));
        space_json[name] = std::move(value);
    }
    const std::string space_name = o.space_path.empty() ? std::string("--param") : o.space_path;
    // What the sweep sets itself is not searched.
    const std::vector<std::string> refused = {"save",   "resume",  "metrics-out", "data",   "dataset", "validation-split",
                                              "help",   "device",  "threads",     "epochs", "best-on"};
    const SweepSpace space = parse_sweep_space(space_json, train_flags(*o.parent), refused);
    std::vector<Trial> all;
    const bool halving = o.strategy == "halving";
    if (o.strategy == "grid") all = grid_trials(space);
    else if (o.strategy == "random") all = random_trials(space, o.trials, o.seed);
    else if (halving) all = space.has_distributions() ? random_trials(space, o.trials, o.seed) : grid_trials(space);
    else throw Error(fmt::format("--strategy: unknown strategy '{}' (expected grid, random or halving)", o.strategy));
    // Successive halving: rung k trains to min_epochs · eta^k epochs (the last rung to --epochs),
    // the best 1/eta of each rung resumed (train --resume: the same run continued) into the next.
    std::vector<int> rungs = {o.epochs};
    if (halving) {
        rungs = halving_rungs(o.min_epochs, o.epochs, o.eta);
        for (const Trial& t : all)
            for (const auto& [flag, value] : t.flags)
                if (flag == "lr-schedule" && value == "cosine")
                    throw Error("--strategy halving continues trials with more epochs, which a cosine schedule (laid out "
                                "over its epochs) does not allow; use step or plateau, or --strategy random");
    }
    const std::vector<Trial> mine = shard_trials(all, shard, shards);

    std::vector<std::string> fixed = {"--data", o.data_dir, "--dataset", o.dataset, "--epochs", std::to_string(o.epochs),
                                      "--validation-split", fmt::format("{}", o.validation_split)};
    if (loss) fixed.insert(fixed.end(), {"--best-on", "loss"});  // best.safetensors: the epoch the objective picks
    auto train_args = [&](const Trial& t) {
        std::vector<std::string> args = {"cumnist", "train"};
        args.insert(args.end(), fixed.begin(), fixed.end());
        for (const auto& [flag, value] : t.flags) args.insert(args.end(), {"--" + flag, value});
        return args;
    };
    if (o.list) {
        for (const Trial& t : mine) fmt::print("{}\n", quoted_command(train_args(t)));
        return 0;
    }

    // The command line a trial's record at `rung` carries: its flags and the rung's epochs.
    auto rung_command = [&](const Trial& t, int rung) {
        std::vector<std::string> command = train_args(t);
        *(std::find(command.begin(), command.end(), "--epochs") + 1) = std::to_string(rungs[static_cast<std::size_t>(rung)]);
        return quoted_command(command);
    };

    std::error_code ec;
    fs::create_directories(o.out, ec);
    if (ec) throw Error(fmt::format("--out: cannot create folder '{}': {}", o.out, ec.message()));
    const std::string results_path = fmt::format("{}/trials{}.jsonl", o.out, shards > 1 ? fmt::format("-{}-of-{}", shard, shards) : "");
    // Resume: the trials already recorded (with the same arguments) are not run again.
    std::string results_text;
    std::map<std::pair<int, int>, json> done;  // (trial, rung)
    {
        std::ifstream in(results_path);
        std::string line;
        while (std::getline(in, line)) {
            if (line.empty()) continue;
            const json r = json::parse(line, nullptr, false);
            if (r.is_discarded() || !r.contains("trial") || !r.contains("arguments"))
                throw Error(fmt::format("'{}' holds a line that is not a trial record; use another --out", results_path));
            const int k = r.at("trial").is_number_integer() ? r.at("trial").get<int>() : -1;
            const int rung = r.value("rung", 0);
            if (k < 0 || k >= static_cast<int>(all.size()) || rung < 0 || rung >= static_cast<int>(rungs.size()) ||
                r.at("arguments") != all[k].arguments() || r.value("command", std::string()) != rung_command(all[k], rung))
                throw Error(fmt::format("'{}' records trial {} of another search (other space, strategy, seed, epochs, "
                                        "objective or data); use another --out",
                                        results_path, k));
            if (r.value("retry", false)) continue;  // run again (see run_trial)
            done[{k, rung}] = r;
            results_text += line + "\n";
        }
    }
    const std::string exe = self_exe();
    // Threads per trial: --threads, or the cores shared out among the trials running at once.
    const int trial_threads = o.threads > 0 ? o.threads : std::max(1, omp_get_num_procs() / o.parallel);
    fmt::print("cumnist sweep: {} search over {}, {} ({} in shard {}/{}), {} each, validated on {:g} % of the "
               "training set; objective: the {}\n",
               o.strategy, space_name, count_of(static_cast<long long>(all.size()), "trial"), mine.size(), shard, shards,
               halving ? fmt::format("rungs of {} epochs", fmt::join(rungs, ", ")) : count_of(o.epochs, "epoch"),
               100 * o.validation_split, loss ? "lowest validation loss" : "highest validation accuracy");
    const std::string threads_note =
        o.device == "gpu" ? std::string() : fmt::format(" ({} each on the CPU)", count_of(trial_threads, "thread"));
    // In process: the data set is read once and shared by every trial.
    std::optional<LoadedData> data;
    if (!o.isolate) {
        const auto t0 = std::chrono::steady_clock::now();
        data.emplace(LoadedData{o.data_dir, o.dataset, load_dataset(o.data_dir, o.dataset, Split::Train),
                                load_dataset(o.data_dir, o.dataset, Split::Test)});
        fmt::print("  trials    in this process, {} at a time{}, on {} loaded once ({} training and {} test "
                   "images, {})\n",
                   o.parallel, threads_note, o.dataset, data->train.n, data->test.n,
                   format_duration(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()));
    } else {
        fmt::print("  trials    child processes (--isolate), {} at a time{}\n", o.parallel, threads_note);
    }
    install_stop_handlers(forward_signal);
    auto stopping = [] { return g_stop.load() != 0; };
    auto stop_status = [] { return 128 + g_stop.load(); };
    if (!done.empty())
        fmt::print("  resuming  {} already in {}\n", count_of(static_cast<long long>(done.size()), "finished run"),
                   results_path);
    std::fflush(stdout);

    std::mutex mutex;  // guards stdout, results_text, done and interrupted across the workers
    int interrupted = 0;
    const bool concurrent = o.parallel > 1;
    // Runs trial t to rung `rung`'s epochs (from scratch, or resumed from the rung before) and
    // records it; an interrupted trial is not recorded and sets `interrupted` (the sweep stops).
    auto run_trial = [&](const Trial& t, int rung, int worker) {
        const std::string dir = fmt::format("{}/trial-{:04d}", o.out, t.index);
        std::error_code dir_ec;
        fs::create_directories(dir, dir_ec);
        if (dir_ec) throw Error(fmt::format("sweep: cannot create '{}': {}", dir, dir_ec.message()));
        std::vector<std::string> args;
        if (rung == 0) {
            fs::remove(dir + "/metrics.jsonl", dir_ec);
            args = train_args(t);
            args[0] = exe;
            *(std::find(args.begin(), args.end(), "--epochs") + 1) = std::to_string(rungs[0]);
        } else {
            args = {exe, "train", "--resume", dir + "/last.safetensors", "--data", o.data_dir, "--epochs",
                    std::to_string(rungs[static_cast<std::size_t>(rung)])};
        }
        args.insert(args.end(), {"--device", o.device, "--threads", std::to_string(trial_threads), "--save", dir,
                                 "--metrics-out", dir + "/metrics.jsonl"});
        const std::string name = fmt::format("Trial {}/{}{}", t.index + 1, all.size(),
                                             halving ? fmt::format(", rung {} ({})", rung + 1,
                                                                   count_of(rungs[static_cast<std::size_t>(rung)], "epoch"))
                                                     : "");
        {
            std::lock_guard<std::mutex> lock(mutex);
            fmt::print("{}{}: {}\n", name, concurrent ? " started" : "", t.arguments());
            std::fflush(stdout);
        }
        const std::string log = fmt::format("{}/train{}.log", dir, rung > 0 ? fmt::format("-rung{}", rung + 1) : "");
        const auto t0 = std::chrono::steady_clock::now();
        int status = 0;
        if (o.isolate) {
            status = run_child(args, log, worker);
        } else {
            std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(log.c_str(), "w"), std::fclose);
            if (!f) throw Error(fmt::format("sweep: cannot write '{}': {}", log, std::strerror(errno)));
            status = train_in_process({args.begin() + 2, args.end()}, *data, f.get());
            if (std::fclose(f.release()) != 0 && status == 0)
                throw Error(fmt::format("sweep: cannot write '{}': {}", log, std::strerror(errno)));
        }
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::lock_guard<std::mutex> lock(mutex);
        const std::string prefix = concurrent ? "  " + name + ":" : " ";
        // Stopped by the signal (a trial that finished before it is recorded as usual).
        if (status == 128 + SIGINT || status == 128 + SIGTERM) {
            fmt::print("Interrupted in trial {}; run the same command again to continue.\n", t.index + 1);
            std::fflush(stdout);
            if (interrupted == 0) interrupted = status;
            return;
        }
        json r = {{"trial", t.index},   {"arguments", t.arguments()}, {"command", rung_command(t, rung)},
                  {"dir", dir},         {"seconds", seconds},         {"device", o.device},
                  {"in_process", !o.isolate}, {"objective", o.objective}};
        if (halving) r["rung"] = rung, r["rung_epochs"] = rungs[static_cast<std::size_t>(rung)];
        json flags = json::object();
        for (const auto& [flag, value] : t.flags) flags[flag] = value;
        r["flags"] = flags;
        r["epochs"] = read_epochs(dir + "/metrics.jsonl");
        const Score accuracy = best_of(r, false), val_loss = best_of(r, true);
        const Score& score = loss ? val_loss : accuracy;
        if (status == 0 && score.epoch > 0) {
            r["status"] = "done";
            r["best_validation_accuracy"] = accuracy.value;
            r["best_epoch"] = accuracy.epoch;
            r["best_validation_loss"] = val_loss.value;
            r["best_loss_epoch"] = val_loss.epoch;
            fmt::print("{} best {} {:.4f} (epoch {}) in {}\n", prefix, loss ? "validation loss" : "validation accuracy",
                       score.value, score.epoch, format_duration(seconds));
        } else {
            r["status"] = "failed";
            r["exit_status"] = status;
            r["error"] = last_line_of(log);
            // In process, a trial can run out of memory or meet a broken GPU because of the others
            // beside it: such a failure is tried again by the next run of the sweep.
            const std::string error = r["error"].get<std::string>();
            if (!o.isolate && (error.find("out of memory") != std::string::npos ||
                               error.find("out of GPU memory") != std::string::npos || error.find("CUDA") != std::string::npos ||
                               error.find("cuBLAS") != std::string::npos || error.find("cuDNN") != std::string::npos))
                r["retry"] = true;
            fmt::print("{} failed (exit {}): {}{}\n", prefix, status, error,
                       r.value("retry", false) ? " (tried again when the sweep is run again)" : "");
        }
        results_text += r.dump() + "\n";
        write_file_atomically(results_path, results_text, "sweep results");
        done[{t.index, rung}] = r;
        std::fflush(stdout);
    };
    std::optional<WorkerPool> pool;
    if (concurrent) pool.emplace(o.parallel);
    std::vector<const Trial*> rung_trials;
    for (const Trial& t : mine) rung_trials.push_back(&t);
    for (std::size_t rung = 0; rung < rungs.size(); ++rung) {
        if (rung > 0) {
            // The best 1/eta of the rung before (the order of the trial list breaks ties) go on.
            std::vector<std::pair<int, double>> scores;
            for (const Trial* t : rung_trials) {
                const json& r = done.at({t->index, static_cast<int>(rung) - 1});
                if (objective(r, loss) != -HUGE_VAL) scores.emplace_back(t->index, objective(r, loss));
            }
            std::vector<const Trial*> promoted;
            for (int k : promote(scores, rung_trials.size(), o.eta)) promoted.push_back(&all[static_cast<std::size_t>(k)]);
            rung_trials = promoted;
            if (rung_trials.empty()) break;
            fmt::print("Rung {}: continuing the best {} to {}\n", rung + 1, count_of(static_cast<long long>(rung_trials.size()), "trial"),
                       count_of(rungs[rung], "epoch"));
        }
        std::vector<const Trial*> pending;
        for (const Trial* t : rung_trials)
            if (!done.count({t->index, static_cast<int>(rung)})) pending.push_back(t);
        auto job = [&](int i, int worker) {
            if (stopping()) return;  // a trial stopped by a signal: start no other
            run_trial(*pending[static_cast<std::size_t>(i)], static_cast<int>(rung), worker);
        };
        if (pool) {
            pool->run(static_cast<int>(pending.size()), job);
        } else {
            for (std::size_t i = 0; i < pending.size() && interrupted == 0; ++i) job(static_cast<int>(i), 0);
        }
        if (interrupted != 0) return interrupted;
        if (stopping()) {
            fmt::print("Interrupted; run the same command again to continue.\n");
            return stop_status();
        }
    }
    pool.reset();

    // The ranking, best first; failed trials last.
    std::vector<json> records;
    for (const auto& [key, r] : done) records.push_back(r);
    return report(records, o, exe);
}

}  // namespace

void add_sweep_command(CLI::App& parent, std::vector<Command>& commands) {
    auto o = std::make_shared<SweepOptions>();
    o->parent = &parent;
    CLI::App* cmd = parent.add_subcommand(
        "sweep", "Search hyperparameters: train every configuration of a search space on a validation split, rank "
                 "them, and evaluate the best once on the test set");
    cmd->add_option("--space", o->space_path,
                    "Search space: a JSON object of train flags, each a list or a distribution, e.g. "
                    "{\"lr\": {\"log_uniform\": [1e-4, 0.1]}, \"optimizer\": [\"adam\", \"sgd\"]}");
    cmd->add_option("--report", o->report, "Merge and rank the results in these sweep folders (the shards of one sweep)");
    cmd->add_option("--out", o->out, "Folder for the trials and trials.jsonl (a rerun continues there)")->capture_default_str();
    cmd->add_option("--strategy", o->strategy,
                    "grid (every combination), random (--trials draws) or halving (successive halving over the grid, "
                    "or over --trials draws when the space holds distributions)")
        ->capture_default_str();
    cmd->add_option("--min-epochs", o->min_epochs, "halving: epochs of the first rung")->capture_default_str();
    cmd->add_option("--eta", o->eta, "halving: the best 1/eta of a rung go on to eta times its epochs")->capture_default_str();
    cmd->add_option("--trials", o->trials, "random: how many trials")->capture_default_str();
    cmd->add_option("--seed", o->seed, "random: the seed of the draws")->check(unsigned_64())->capture_default_str();
    cmd->add_option("--shard", o->shard, "Run share I of N of the trials (I/N: trials k with k mod N = I - 1)")
        ->capture_default_str();
    cmd->add_option("--epochs", o->epochs, "Epochs per trial (halving: of the last rung)")->capture_default_str();
    cmd->add_option("--validation-split", o->validation_split, "Fraction of the training set held out for the objective")
        ->capture_default_str();
    cmd->add_option("--data", o->data_dir, "Data folder holding <dataset>/ with the IDX files")->capture_default_str();
    cmd->add_option("--dataset", o->dataset, "Data set: mnist or fashion")->capture_default_str();
    cmd->add_option("--param", o->params,
                    "A hyperparameter of the space, without a JSON file (repeatable; beside --space too): NAME=A,B,C "
                    "(a list; separate with | when the values hold commas, e.g. 'hidden=512,256|128'), NAME=LO..HI "
                    "(uniform), NAME=LO..HI:log (log-uniform) or NAME=LO..HI:int");
    cmd->add_option("--objective", o->objective,
                    "What ranks and promotes the trials: accuracy (the highest validation accuracy) or loss (the "
                    "lowest validation loss; the trials then keep best.safetensors at it)")
        ->capture_default_str();
    cmd->add_option("--parallel", o->parallel,
                    "Trials run at once: on the CPU each gets its share of the cores (or --threads), on the GPU its "
                    "own stream, so that small models keep the device busy")
        ->capture_default_str();
    cmd->add_flag("--isolate", o->isolate,
                  "Run each trial as a child cumnist train process (a crash is then only that trial's) instead of in "
                  "this process on the data loaded once");
    cmd->add_option("--device", o->device, "auto, cpu or gpu, for every trial")->capture_default_str();
    cmd->add_option("--threads", o->threads, "CPU threads per trial (0: the cores shared out among --parallel trials)")
        ->capture_default_str();
    cmd->add_flag("--list", o->list, "Print the shard's trials as cumnist train command lines and stop");
    commands.push_back({cmd, [o, cmd] {
                            o->objective_given = cmd->count("--objective") > 0;
                            return run_sweep(*o);
                        }});
}

}  // namespace cumnist::cli
