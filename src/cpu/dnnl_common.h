// What the CPU backend's oneDNN primitives share: one engine and stream per calling thread, and
// execution through oneDNN's C interface with its status turned into cumnist::Error.
#pragma once

#include <dnnl.hpp>

#include "cumnist/error.h"

namespace cumnist::cpu::onednn {

struct ThreadEngine {
    dnnl::engine engine{dnnl::engine::kind::cpu, 0};
    dnnl::stream stream{engine};
};

// This thread's engine and stream (a primitive's memory objects are rebound to the caller's
// pointers on every call, which must not race with another thread doing the same).
inline ThreadEngine& thread_engine() {
    thread_local ThreadEngine e;
    return e;
}

inline void check(dnnl_status_t status, const char* what) {
    if (status != dnnl_success) throw Error(fmt::format("oneDNN: {} failed (status {})", what, static_cast<int>(status)));
}

// Runs the primitive on this thread's stream and waits for it. The C interface: the C++ one builds
// a map of the arguments on every call.
inline void execute(const dnnl::primitive& p, int n_args, const dnnl_exec_arg_t* args, const char* what) {
    ThreadEngine& e = thread_engine();
    check(dnnl_primitive_execute(p.get(), e.stream.get(), n_args, args), what);
    check(dnnl_stream_wait(e.stream.get()), what);
}

}  // namespace cumnist::cpu::onednn
