// Hyperparameter search spaces and trial lists (cumnist sweep).
//
// A space is a JSON object whose keys are `cumnist train` flags without the leading "--" and whose
// values say what the flag takes:
//   [v1, v2, ...]                 a grid axis (grid search) or a uniform choice (random search)
//   {"choice": [v1, v2, ...]}     a uniform choice (random search only)
//   {"uniform": [lo, hi]}         a float uniform in [lo, hi]
//   {"log_uniform": [lo, hi]}     a float whose logarithm is uniform in [log lo, log hi], 0 < lo
//   {"int": [lo, hi]}             an integer uniform in [lo, hi]
// e.g. {"lr": {"log_uniform": [1e-4, 1e-1]}, "optimizer": ["adam", "sgd"], "hidden": ["512,256", "64"]}.
// Values are strings, numbers or booleans and become the flag's text ("512,256", "0.001").
//
// Grid: every combination, the hyperparameters sorted by name and the last varying fastest. Random: `trials` draws, each value from Philox under the
// seed (stream kSweepStream, counter = the trial, index = the hyperparameter): the same seed gives
// the same list on every platform. A shard I/N (1-based) runs the trials whose index k has
// k mod N == I − 1: shards are disjoint and together cover the list.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace cumnist {

struct SweepParameter {
    enum class Kind { List, Choice, Uniform, LogUniform, Int };
    std::string flag;                  // without "--"
    Kind kind = Kind::List;
    std::vector<std::string> values;   // List, Choice: the values' flag texts
    double lo = 0, hi = 0;             // Uniform, LogUniform, Int
};

struct SweepSpace {
    std::vector<SweepParameter> parameters;  // in key order
    bool has_distributions() const;          // anything but lists
    std::size_t grid_size() const;           // the product of the list sizes (grid search)
};

// One trial: its index in the full list and its flags, in the space's key order.
struct Trial {
    int index = 0;
    std::vector<std::pair<std::string, std::string>> flags;  // ("lr", "0.001")
    // "--lr 0.001 --optimizer adam": the flags as train takes them.
    std::string arguments() const;
};

// Parses and checks a space. `known_flags` are the flags train accepts (without "--"); `refused`
// those a sweep sets itself. Throws Error naming the entry and what is wrong with it: an unknown
// or refused flag, an empty list, an inverted or empty range, a log-uniform range that is not
// positive, an int range with non-integer ends, a value that is not a string, number or boolean,
// an object that is not one of the distributions.
SweepSpace parse_sweep_space(const nlohmann::json& j, const std::vector<std::string>& known_flags,
                             const std::vector<std::string>& refused = {});

// The grid (every combination; throws Error when the space holds a distribution or has more than
// `max_trials` combinations) or `trials` random draws under `seed`.
std::vector<Trial> grid_trials(const SweepSpace& space, std::size_t max_trials = 100000);
std::vector<Trial> random_trials(const SweepSpace& space, int trials, uint64_t seed);

// Successive halving. The rungs' epochs: min_epochs · eta^k below `epochs`, then `epochs` (throws
// Error for min_epochs outside [1, epochs] or eta < 2). promote: of a rung of `rung_size` trials
// whose finished ones scored `scores` (trial index, validation accuracy), the best
// ceil(rung_size / eta) go on (at least one), best first; equal scores keep the list's order.
std::vector<int> halving_rungs(int min_epochs, int epochs, int eta);
std::vector<int> promote(std::vector<std::pair<int, double>> scores, std::size_t rung_size, int eta);

// One hyperparameter as `cumnist sweep --param` takes it, as the (flag, JSON value) of a space entry:
//   NAME=A,B,C        a list ["A", "B", "C"]; split on '|' instead when the text holds one, so that
//                     values with commas can be listed ("hidden=512,256|128": ["512,256", "128"])
//   NAME=LO..HI       {"uniform": [LO, HI]}
//   NAME=LO..HI:log   {"log_uniform": [LO, HI]}
//   NAME=LO..HI:int   {"int": [LO, HI]}
// Throws Error naming the text for a missing name or value, an empty list item, a range end that
// is not a number or an unknown range kind. The flag and the range are checked by parse_sweep_space.
std::pair<std::string, nlohmann::json> parse_param(const std::string& text);

// `word` as a POSIX shell reads it back: as it is when it holds nothing the shell would change,
// else in single quotes (a quote inside written '\'').
std::string shell_quote(const std::string& word);

// "I/N" → (I, N) with 1 ≤ I ≤ N; throws Error otherwise.
std::pair<int, int> parse_shard(const std::string& text);
// The trials of shard I of N.
std::vector<Trial> shard_trials(const std::vector<Trial>& trials, int shard, int shards);

}  // namespace cumnist
