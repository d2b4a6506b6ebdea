// Hyperparameter search spaces and trial lists (sweep.h).
#include "cumnist/sweep.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "cumnist/error.h"
#include "cumnist/philox.h"

namespace cumnist {

namespace {

constexpr uint32_t kSweepStream = 0x4u;

// A JSON scalar as the text a flag takes.
std::string flag_text(const std::string& flag, const nlohmann::json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
    if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
    if (v.is_number()) return fmt::format("{}", v.get<double>());
    throw Error(fmt::format("sweep space: \"{}\" holds {}, expected a string, number or boolean", flag, v.dump()));
}

// A uniform double in [0, 1) from two Philox words (53 bits).
double uniform01(uint64_t seed, uint64_t trial, uint64_t parameter) {
    const uint64_t hi = philox_word(seed, kSweepStream, trial, 2 * parameter);
    const uint64_t lo = philox_word(seed, kSweepStream, trial, 2 * parameter + 1);
    return static_cast<double>(((hi << 32) | lo) >> 11) * 0x1.0p-53;
}

}  // namespace

bool SweepSpace::has_distributions() const {
    return std::any_of(parameters.begin(), parameters.end(),
                       [](const SweepParameter& p) { return p.kind != SweepParameter::Kind::List; });
}

std::size_t SweepSpace::grid_size() const {
    std::size_t n = 1;
    for (const SweepParameter& p : parameters) n *= std::max<std::size_t>(p.values.size(), 1);
    return n;
}

std::pair<std::string, nlohmann::json> parse_param(const std::string& text) {
    const std::size_t eq = text.find('=');
    std::string name = text.substr(0, eq == std::string::npos ? 0 : eq);
    if (name.rfind("--", 0) == 0) name.erase(0, 2);  // "--lr=..." as train's flag is spelt
    if (eq == std::string::npos || name.empty() || eq + 1 == text.size())
        throw Error(fmt::format("--param '{}': expected NAME=VALUES, e.g. optimizer=adam,sgd or lr=1e-4..1e-1:log", text));
    std::string value = text.substr(eq + 1);
    const std::size_t dots = value.find("..");
    if (dots != std::string::npos) {
        // LO..HI[:log|:int]
        std::string kind = "uniform";
        const std::size_t colon = value.find(':', dots);
        if (colon != std::string::npos) {
            const std::string suffix = value.substr(colon + 1);
            if (suffix == "log") kind = "log_uniform";
            else if (suffix == "int") kind = "int";
            else
                throw Error(fmt::format("--param '{}': unknown range kind ':{}' (expected :log or :int, or none for "
                                        "uniform)",
                                        text, suffix));
            value.resize(colon);
        }
        auto number = [&](const std::string& word, const char* end) {
            char* stop = nullptr;
            errno = 0;
            const double v = word.empty() ? 0.0 : std::strtod(word.c_str(), &stop);
            if (word.empty() || stop != word.c_str() + word.size() || errno == ERANGE || !std::isfinite(v))
                throw Error(fmt::format("--param '{}': the {} end of the range, '{}', is not a number", text, end, word));
            return v;
        };
        const double lo = number(value.substr(0, dots), "low"), hi = number(value.substr(dots + 2), "high");
        if (kind == "int") {
            // Integer ends as JSON integers (16, not 16.0), which is what an "int" range takes.
            for (const double v : {lo, hi})
                if (v != std::floor(v) || std::fabs(v) > 9.0e15)
                    throw Error(fmt::format("--param '{}': an :int range takes whole-number ends, got {}", text, v));
            return {name, nlohmann::json{{kind, {static_cast<long long>(lo), static_cast<long long>(hi)}}}};
        }
        return {name, nlohmann::json{{kind, {lo, hi}}}};
    }
    // A list: split on '|' when the values hold one (so that "512,256|128" is two), else on ','.
    const char separator = value.find('|') != std::string::npos ? '|' : ',';
    nlohmann::json list = nlohmann::json::array();
    std::size_t begin = 0;
    for (;;) {
        const std::size_t end = value.find(separator, begin);
        const std::string item = value.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
        if (item.empty())
            throw Error(fmt::format("--param '{}': an empty value in the list (values are separated by '{}')", text,
                                    separator));
        if (std::isspace(static_cast<unsigned char>(item.front())) || std::isspace(static_cast<unsigned char>(item.back())))
            throw Error(fmt::format("--param '{}': the value '{}' has spaces around it (write the list without "
                                    "spaces, e.g. lr=0.1,0.01)",
                                    text, item));
        list.push_back(item);
        if (end == std::string::npos) break;
        begin = end + 1;
    }
    return {name, list};
}

std::string shell_quote(const std::string& word) {
    if (!word.empty() && word.find_first_of(" \t\n'\"\\$`;&|<>*?()[]{}#~!") == std::string::npos) return word;
    std::string out = "'";
    for (char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

std::string Trial::arguments() const {
    std::string out;
    for (const auto& [flag, value] : flags) out += fmt::format("{}--{} {}", out.empty() ? "" : " ", flag, shell_quote(value));
    return out;
}

SweepSpace parse_sweep_space(const nlohmann::json& j, const std::vector<std::string>& known_flags,
                             const std::vector<std::string>& refused) {
    if (!j.is_object()) throw Error(fmt::format("sweep space: a JSON {}, expected an object of flags", j.type_name()));
    if (j.empty()) throw Error("sweep space: no hyperparameters");
    SweepSpace space;
    for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string& flag = it.key();
        const nlohmann::json& v = it.value();
        if (std::find(refused.begin(), refused.end(), flag) != refused.end())
            throw Error(fmt::format("sweep space: \"{}\" is set by the sweep itself and cannot be searched", flag));
        if (std::find(known_flags.begin(), known_flags.end(), flag) == known_flags.end())
            throw Error(fmt::format("sweep space: unknown hyperparameter \"{}\" (not a cumnist train flag; see cumnist "
                                    "train --help)",
                                    flag));
        SweepParameter p;
        p.flag = flag;
        auto list = [&](const nlohmann::json& values, const char* what) {
            if (!values.is_array() || values.empty())
                throw Error(fmt::format("sweep space: \"{}\": {} must be a non-empty list, got {}", flag, what,
                                        values.dump()));
            for (const nlohmann::json& x : values) p.values.push_back(flag_text(flag, x));
        };
        if (v.is_array()) {
            list(v, "the values");
        } else if (v.is_object() && v.size() == 1) {
            const std::string kind = v.begin().key();
            const nlohmann::json& arg = v.begin().value();
            if (kind == "choice") {
                p.kind = SweepParameter::Kind::Choice;
                list(arg, "\"choice\"");
            } else if (kind == "uniform" || kind == "log_uniform" || kind == "int") {
                p.kind = kind == "uniform"       ? SweepParameter::Kind::Uniform
                         : kind == "log_uniform" ? SweepParameter::Kind::LogUniform
                                                 : SweepParameter::Kind::Int;
                if (!arg.is_array() || arg.size() != 2 || !arg[0].is_number() || !arg[1].is_number())
                    throw Error(fmt::format("sweep space: \"{}\": \"{}\" takes [lo, hi], got {}", flag, kind, arg.dump()));
                p.lo = arg[0].get<double>(), p.hi = arg[1].get<double>();
                if (!std::isfinite(p.lo) || !std::isfinite(p.hi) || !(p.lo < p.hi))
                    throw Error(fmt::format("sweep space: \"{}\": the range [{}, {}] is empty or inverted", flag, p.lo,
                                            p.hi));
                if (p.kind == SweepParameter::Kind::LogUniform && p.lo <= 0)
                    throw Error(fmt::format("sweep space: \"{}\": log_uniform needs 0 < lo, got [{}, {}]", flag, p.lo,
                                            p.hi));
                if (p.kind == SweepParameter::Kind::Int && (!arg[0].is_number_integer() || !arg[1].is_number_integer()))
                    throw Error(fmt::format("sweep space: \"{}\": \"int\" takes integer ends, got {}", flag, arg.dump()));
            } else {
                throw Error(fmt::format("sweep space: \"{}\": unknown distribution \"{}\" (expected a list, choice, "
                                        "uniform, log_uniform or int)",
                                        flag, kind));
            }
        } else {
            throw Error(fmt::format("sweep space: \"{}\" is {}, expected a list of values or one distribution such "
                                    "as {{\"log_uniform\": [1e-4, 1e-1]}}",
                                    flag, v.dump()));
        }
        space.parameters.push_back(std::move(p));
    }
    return space;
}

std::vector<Trial> grid_trials(const SweepSpace& space, std::size_t max_trials) {
    for (const SweepParameter& p : space.parameters)
        if (p.kind != SweepParameter::Kind::List)
            throw Error(fmt::format("sweep space: \"{}\" is a distribution; a grid search takes lists only (use "
                                    "--strategy random)",
                                    p.flag));
    // The product, checked before it is built.
    double size = 1;
    for (const SweepParameter& p : space.parameters) size *= static_cast<double>(p.values.size());
    if (size > static_cast<double>(max_trials))
        throw Error(fmt::format("sweep space: the grid has {:.0f} combinations, more than {}; use --strategy random",
                                size, max_trials));
    std::vector<Trial> trials(static_cast<std::size_t>(size));
    for (std::size_t t = 0; t < trials.size(); ++t) {
        trials[t].index = static_cast<int>(t);
        std::size_t rest = t;
        std::vector<std::pair<std::string, std::string>> flags(space.parameters.size());
        for (std::size_t k = space.parameters.size(); k-- > 0;) {  // the last varies fastest
            const SweepParameter& p = space.parameters[k];
            flags[k] = {p.flag, p.values[rest % p.values.size()]};
            rest /= p.values.size();
        }
        trials[t].flags = std::move(flags);
    }
    return trials;
}

std::vector<Trial> random_trials(const SweepSpace& space, int trials, uint64_t seed) {
    if (trials < 1) throw Error(fmt::format("--trials must be at least 1, got {}", trials));
    std::vector<Trial> out(static_cast<std::size_t>(trials));
    for (int t = 0; t < trials; ++t) {
        Trial& trial = out[static_cast<std::size_t>(t)];
        trial.index = t;
        for (std::size_t k = 0; k < space.parameters.size(); ++k) {
            const SweepParameter& p = space.parameters[k];
            const double u = uniform01(seed, static_cast<uint64_t>(t), k);
            std::string value;
            switch (p.kind) {
                case SweepParameter::Kind::List:
                case SweepParameter::Kind::Choice:
                    value = p.values[std::min(p.values.size() - 1, static_cast<std::size_t>(u * static_cast<double>(p.values.size())))];
                    break;
                case SweepParameter::Kind::Uniform: value = fmt::format("{:.6g}", p.lo + u * (p.hi - p.lo)); break;
                case SweepParameter::Kind::LogUniform:
                    value = fmt::format("{:.4g}", std::exp(std::log(p.lo) + u * (std::log(p.hi) - std::log(p.lo))));
                    break;
                case SweepParameter::Kind::Int: {
                    const double span = p.hi - p.lo + 1;
                    value = std::to_string(static_cast<int64_t>(p.lo) + static_cast<int64_t>(std::min(span - 1, std::floor(u * span))));
                    break;
                }
            }
            trial.flags.emplace_back(p.flag, value);
        }
    }
    return out;
}

std::vector<int> halving_rungs(int min_epochs, int epochs, int eta) {
    if (min_epochs < 1 || min_epochs > epochs)
        throw Error(fmt::format("--min-epochs must be in [1, --epochs {}], got {}", epochs, min_epochs));
    if (eta < 2) throw Error(fmt::format("--eta must be at least 2, got {}", eta));
    std::vector<int> rungs;
    for (long long e = min_epochs; e < epochs; e *= eta) rungs.push_back(static_cast<int>(e));
    rungs.push_back(epochs);
    return rungs;
}

std::vector<int> promote(std::vector<std::pair<int, double>> scores, std::size_t rung_size, int eta) {
    std::stable_sort(scores.begin(), scores.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    const std::size_t keep = std::max<std::size_t>(1, (rung_size + static_cast<std::size_t>(eta) - 1) / static_cast<std::size_t>(eta));
    std::vector<int> out;
    for (std::size_t i = 0; i < scores.size() && i < keep; ++i) out.push_back(scores[i].first);
    return out;
}

std::pair<int, int> parse_shard(const std::string& text) {
    const std::size_t slash = text.find('/');
    auto number = [&](const std::string& s) {
        if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos) return -1;
        return std::stoi(s);
    };
    const int i = slash == std::string::npos ? -1 : number(text.substr(0, slash));
    const int n = slash == std::string::npos ? -1 : number(text.substr(slash + 1));
    if (i < 1 || n < 1 || i > n)
        throw Error(fmt::format("--shard '{}': expected I/N with 1 <= I <= N (e.g. 2/4: the second of four shares)", text));
    return {i, n};
}

std::vector<Trial> shard_trials(const std::vector<Trial>& trials, int shard, int shards) {
    std::vector<Trial> out;
    for (const Trial& t : trials)
        if (t.index % shards == shard - 1) out.push_back(t);
    return out;
}

}  // namespace cumnist
