// cumnist::Error, the one exception type of the library, and CUMNIST_CHECK, which throws it
// with the failed expression and file:line.
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace cumnist {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
[[noreturn]] void throw_check_failure(const char* expr, const char* file, int line, const std::string& message);
}  // namespace detail

}  // namespace cumnist

// CUMNIST_CHECK(cond, fmt, args...): throws cumnist::Error("<message> [check 'cond' failed at file:line]").
#define CUMNIST_CHECK(cond, ...)                                                                          \
    do {                                                                                                  \
        if (!(cond)) ::cumnist::detail::throw_check_failure(#cond, __FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
    } while (0)
