// Helpers shared by the cumnist tests: deterministic host data, element-wise closeness checks
// whose tolerance is stated at the call site, and the visible skip of CUDA tests on machines
// without a usable GPU (a skipped backend is reported as skipped, never counted as passed).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <ostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <vector>

#include <gtest/gtest.h>

#include "cumnist/buffer.h"
#include "cumnist/device.h"
#include "cumnist/error.h"
#include "cumnist/ops.h"

// In a test fixture's SetUp (or a test body): skip, visibly and with the reason, when no GPU is
// usable; but fail instead, with the reason, where a skip would hide that the GPU checks did not
// run (cumnist_test::gpu_skip_forbidden).
#define CUMNIST_SKIP_WITHOUT_GPU()                                                                \
    do {                                                                                          \
        if (!::cumnist::cuda_available()) {                                                       \
            const std::string cumnist_forbidden_ = ::cumnist_test::gpu_skip_forbidden();          \
            if (!cumnist_forbidden_.empty())                                                      \
                GTEST_FAIL() << cumnist_forbidden_ << ": " << ::cumnist::cuda_unavailable_reason(); \
            GTEST_SKIP() << "no CUDA device: " << ::cumnist::cuda_unavailable_reason();           \
        }                                                                                         \
    } while (0)

// The same for a case parameterised by device: only the GPU case skips (or fails).
#define CUMNIST_SKIP_WITHOUT_DEVICE(device)                              \
    do {                                                                 \
        if ((device) == ::cumnist::Device::Cuda) CUMNIST_SKIP_WITHOUT_GPU(); \
    } while (0)

namespace cumnist {
// Readable devices in gtest's parameter printouts ("GetParam() = (Cpu, ...)").
inline void PrintTo(Device d, std::ostream* os) { *os << (d == Device::Cpu ? "Cpu" : "Cuda"); }
}  // namespace cumnist

namespace cumnist_test {

// Runs `call`, which must throw cumnist::Error whose message contains `op` and `detail`.
inline void expect_rejected(const std::function<void()>& call, const std::string& op, const std::string& detail = "") {
    try {
        call();
        ADD_FAILURE() << op << ": accepted, expected a cumnist::Error";
    } catch (const cumnist::Error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find(op), std::string::npos) << "message does not name the op '" << op << "': " << what;
        if (!detail.empty()) {
            EXPECT_NE(what.find(detail), std::string::npos) << "message does not mention '" << detail << "': " << what;
        }
    } catch (const std::exception& e) {
        ADD_FAILURE() << op << ": threw " << typeid(e).name() << " instead of cumnist::Error: " << e.what();
    }
}

// Why a GPU case must fail rather than skip when no GPU is usable, or empty when a skip is honest:
//  - CUMNIST_REQUIRE_GPU=1 in the environment: the machine is meant to have a usable GPU (a GPU
//    server, scripts/gpu_report.sh), so a missing driver, a CUDA-less build or a stale
//    CUMNIST_CUDA=OFF in build/ must not turn every GPU case into a pass;
//  - a GPU is present but this build cannot use it (no code for its architecture, a device that
//    refuses a context): a broken build or installation, never "no GPU".
inline std::string gpu_skip_forbidden() {
    const char* require = std::getenv("CUMNIST_REQUIRE_GPU");
    if (require != nullptr && std::string(require) == "1") return "CUMNIST_REQUIRE_GPU=1 but no GPU is usable";
    if (::cumnist::cuda_device_present()) return "a CUDA device is present but this build cannot use it";
    return {};
}

// Uniform floats in [lo, hi) from a fixed seed (std::mt19937: same data on every run).
inline std::vector<float> uniform_floats(std::size_t n, float lo, float hi, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
}

// Uniform integers in [lo, hi] as uint8_t.
inline std::vector<uint8_t> uniform_bytes(std::size_t n, int lo, int hi, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> dist(lo, hi);
    std::vector<uint8_t> v(n);
    for (uint8_t& x : v) x = static_cast<uint8_t>(dist(rng));
    return v;
}

// |got − want| ≤ abs + rel · |want|, element by element. NaN or Inf in `got` fails (unless
// `want` is the same Inf).
struct Tolerance {
    double abs;
    double rel;
};

// A float sum of `terms` products of size ≤ 1: 1e-4 absolute + 1e-4 relative up to 100 terms, the
// absolute part scaled by √(terms / 100) beyond.
inline Tolerance reduction_tolerance(double terms) { return {1e-4 * std::max(1.0, std::sqrt(terms / 100.0)), 1e-4}; }

template <class Got>
::testing::AssertionResult all_close(const std::vector<Got>& got, const std::vector<double>& want, Tolerance tol,
                                     const std::string& what = "values") {
    if (got.size() != want.size()) {
        return ::testing::AssertionFailure() << what << ": size " << got.size() << ", expected " << want.size();
    }
    std::size_t failures = 0, worst = 0;
    double worst_excess = -1.0;
    std::ostringstream first;
    first.precision(9);
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double g = static_cast<double>(got[i]);
        const double w = want[i];
        const double err = std::fabs(g - w);
        const double allowed = tol.abs + tol.rel * std::fabs(w);
        const bool ok = (g == w) || (std::isfinite(g) && err <= allowed);
        if (!ok) {
            if (failures < 5)
                first << "\n  [" << i << "] got " << g << ", expected " << w << " (|err| " << err << " > " << allowed
                      << ")";
            const double excess = std::isfinite(err) ? err / allowed : HUGE_VAL;
            if (excess > worst_excess) worst_excess = excess, worst = i;
            ++failures;
        }
    }
    if (failures == 0) return ::testing::AssertionSuccess();
    std::ostringstream msg;
    msg.precision(9);
    msg << what << ": " << failures << " of " << got.size() << " elements outside |err| <= " << tol.abs << " + "
        << tol.rel << "·|expected|; worst [" << worst << "] got " << static_cast<double>(got[worst]) << ", expected "
        << want[worst] << first.str();
    return ::testing::AssertionFailure() << msg.str();
}

// A tolerance relative to the tensor rather than to each element: |err| ≤ scale · max |want|.
// For gradients, whose elements span orders of magnitude, so that a per-element absolute floor
// cannot swallow the small ones' errors.
inline Tolerance scaled_to_max(const std::vector<double>& want, double scale) {
    double largest = 0.0;
    for (double w : want) largest = std::max(largest, std::fabs(w));
    return {scale * largest, 0.0};
}

inline std::vector<double> widen(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

inline std::string device_label(cumnist::Device d) { return d == cumnist::Device::Cpu ? "Cpu" : "Cuda"; }

// The convolution workspace of geometry g on `device`, allocated as the trainer does: once, with
// conv2d_workspace_bytes(g), and an empty view when it is 0.
struct Workspace {
    cumnist::Buffer<uint8_t> buffer;
    cumnist::MatrixView<uint8_t> view;
};

inline Workspace make_workspace(const cumnist::Conv2dGeometry& g, cumnist::Device device) {
    const std::size_t bytes = cumnist::ops::conv2d_workspace_bytes(g, device);
    if (bytes > cumnist::kMaxViewElements) throw std::runtime_error("workspace larger than one view");
    Workspace ws;
    ws.buffer = cumnist::Buffer<uint8_t>(bytes, device);
    ws.view = bytes > 0 ? ws.buffer.view(1, static_cast<int>(bytes)) : cumnist::MatrixView<uint8_t>{nullptr, 0, 0, device};
    return ws;
}

}  // namespace cumnist_test
