// SIGINT and SIGTERM are received by one thread of their own, never by a thread that computes.
//
// A signal handler runs on the stack of whichever thread the kernel picks, and the kernel writes
// its signal frame (the registers and the whole vector state, kilobytes with AVX-512) just below
// that thread's stack pointer. Some of oneDNN's JIT GEMM kernels point the stack pointer into a
// heap workspace while they run; a signal delivered then writes its frame over the heap below that
// workspace, and the process aborts later in free() ("corrupted size vs. prev_size"). So the two
// signals are blocked in every thread (main blocks them before any other thread exists, and a
// thread inherits its creator's mask) and one thread takes them with sigwait(), as plain data.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <mutex>
#include <thread>

#include "cli_common.h"

namespace cumnist::cli {

std::atomic<bool> g_stop_requested{false};

namespace {

constexpr int kStopSignals[] = {SIGINT, SIGTERM};

enum class Mode : int { Default, StopOnce, Forward };
std::atomic<int> g_mode{static_cast<int>(Mode::Default)};
std::atomic<SignalForward> g_forward{nullptr};
std::atomic<int> g_stop_signal{0};
bool g_ignored_at_start[2] = {false, false};  // written before the signal thread starts
static_assert(std::atomic<SignalForward>::is_always_lock_free && std::atomic<int>::is_always_lock_free);

sigset_t stop_set() {
    sigset_t set;
    sigemptyset(&set);
    for (int s : kStopSignals) sigaddset(&set, s);
    return set;
}

// Installed so that a signal the process was started with ignored (a shell's background job) is
// still queued for sigwait() once armed. It runs only on a thread that existed before
// start_signal_thread() (a process that did not call it first): there it does what the signal
// thread would for an armed process, as far as a handler can.
extern "C" void on_unblocked_thread(int signal_number) {
    if (static_cast<Mode>(g_mode.load()) != Mode::Default) request_stop(signal_number);
}

// The signal's default action, as if no handler had been installed: the process ends with it.
[[noreturn]] void die_of(int signal_number) {
    std::signal(signal_number, SIG_DFL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, signal_number);
    pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
    raise(signal_number);  // to this thread, which now has it unblocked
    _exit(128 + signal_number);
}

void receive_signals() {
    pthread_setname_np(pthread_self(), "cumnist-signals");  // as top -H and /proc show it
    const sigset_t set = stop_set();
    for (;;) {
        int signal_number = 0;
        if (sigwait(&set, &signal_number) != 0) continue;
        switch (static_cast<Mode>(g_mode.load())) {
        case Mode::Default:
            if (g_ignored_at_start[signal_number == SIGINT ? 0 : 1]) break;
            die_of(signal_number);
        case Mode::StopOnce:
            if (g_stop_signal.load() != 0) die_of(signal_number);  // the second one ends the process
            request_stop(signal_number);
            break;
        case Mode::Forward:
            request_stop(signal_number);
            if (const SignalForward forward = g_forward.load()) forward(signal_number);
            break;
        }
    }
}

}  // namespace

void start_signal_thread() {
    static std::once_flag started;
    std::call_once(started, [] {
        // Blocked first: a signal that comes meanwhile stays pending for sigwait(), not lost to
        // the handler.
        const sigset_t set = stop_set();
        pthread_sigmask(SIG_BLOCK, &set, nullptr);
        for (int k = 0; k < 2; ++k) {
            struct sigaction old {};
            sigaction(kStopSignals[k], nullptr, &old);
            g_ignored_at_start[k] = old.sa_handler == SIG_IGN;
            struct sigaction queued {};
            queued.sa_handler = on_unblocked_thread;
            sigemptyset(&queued.sa_mask);
            sigaction(kStopSignals[k], &queued, nullptr);
        }
        std::thread(receive_signals).detach();
    });
}

void request_stop(int signal_number) noexcept {
    int none = 0;
    g_stop_signal.compare_exchange_strong(none, signal_number);
    g_stop_requested.store(true, std::memory_order_release);  // after the signal: stop_signal() then reads it
}

void install_stop_handlers(SignalForward forward) {
    start_signal_thread();
    g_forward.store(forward);
    g_mode.store(static_cast<int>(forward ? Mode::Forward : Mode::StopOnce));
}

int stop_signal() { return g_stop_signal.load(); }

}  // namespace cumnist::cli
