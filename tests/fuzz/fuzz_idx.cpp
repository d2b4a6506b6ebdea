// libFuzzer target for the IDX reader (include/cumnist/data.h), raw and gzip: every input is
// parsed as a rank-1 (labels) and a rank-3 (images) file. cumnist::Error is the documented way to
// reject an input; any other exception, a crash, a leak, a sanitizer report, an allocation beyond
// libFuzzer's limits, a hang, or an accepted result that contradicts its own header is a finding.
// Seed corpus: tests/fuzz/corpus/idx (tests/fuzz/make_corpus.py); run with scripts/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "cumnist/data.h"
#include "cumnist/error.h"

namespace {

[[noreturn]] void finding(const char* what, int rank) {
    std::fprintf(stderr, "fuzz_idx: rank %d: %s\n", rank, what);
    std::abort();
}

void parse_as(const uint8_t* data, std::size_t size, int rank) {
    try {
        const cumnist::IdxArray a = cumnist::parse_idx("fuzz-input", data, size, rank);
        // Accepted: the result must be exactly what the header declares.
        if (a.dims.size() != static_cast<std::size_t>(rank)) finding("accepted with the wrong number of dimensions", rank);
        uint64_t count = 1;
        for (uint32_t d : a.dims) count *= d;
        if (count != a.data.size()) finding("accepted, but the data size differs from the header's", rank);
    } catch (const cumnist::Error&) {
        // A clean rejection.
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fuzz_idx: rank %d: exception other than cumnist::Error: %s\n", rank, e.what());
        std::abort();
    } catch (...) {
        finding("non-std exception", rank);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
    parse_as(data, size, 1);
    parse_as(data, size, 3);
    return 0;
}
