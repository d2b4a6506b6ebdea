// cumnist::Error helpers.
#include "cumnist/error.h"

namespace cumnist::detail {

void throw_check_failure(const char* expr, const char* file, int line, const std::string& message) {
    throw Error(fmt::format("{} [check '{}' failed at {}:{}]", message, expr, file, line));
}

}  // namespace cumnist::detail
