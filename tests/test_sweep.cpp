// Search spaces and trial lists (sweep.h): parsing with errors that name the entry, the grid's
// order, seeded random draws inside their ranges, and shards that are disjoint and cover the list.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>

#include "cumnist/error.h"
#include "cumnist/sweep.h"

namespace {

using namespace cumnist;
using nlohmann::json;

const std::vector<std::string> kFlags = {"lr", "optimizer", "hidden", "dropout", "batch-size", "save", "momentum"};

std::string error_of(const json& space, const std::vector<std::string>& refused = {"save"}) {
    try {
        (void)parse_sweep_space(space, kFlags, refused);
    } catch (const Error& e) {
        return e.what();
    }
    return "<no error>";
}

TEST(SweepSpace, ErrorsNameTheEntry) {
    const std::pair<json, std::string> cases[] = {
        {json::parse(R"({"lrr": [1]})"), "unknown hyperparameter \"lrr\""},
        {json::parse(R"({"lr": []})"), "\"lr\": the values must be a non-empty list"},
        {json::parse(R"({"lr": {"uniform": [1, 0]}})"), "\"lr\": the range [1, 0] is empty or inverted"},
        {json::parse(R"({"lr": {"log_uniform": [0, 1]}})"), "\"lr\": log_uniform needs 0 < lo"},
        {json::parse(R"({"lr": {"log_uniform": [-1, 1]}})"), "log_uniform needs 0 < lo"},
        {json::parse(R"({"batch-size": {"int": [1.5, 9]}})"), "\"batch-size\": \"int\" takes integer ends"},
        {json::parse(R"({"lr": {"normal": [0, 1]}})"), "\"lr\": unknown distribution \"normal\""},
        {json::parse(R"({"lr": {"uniform": [0]}})"), "\"lr\": \"uniform\" takes [lo, hi]"},
        {json::parse(R"({"lr": 0.1})"), "\"lr\" is 0.1, expected a list of values or one distribution"},
        {json::parse(R"({"lr": [[1]]})"), "\"lr\" holds [1], expected a string, number or boolean"},
        {json::parse(R"({"save": ["a"]})"), "\"save\" is set by the sweep itself"},
        {json::parse(R"({})"), "no hyperparameters"},
        {json::parse(R"([1, 2])"), "expected an object of flags"},
    };
    for (const auto& [space, message] : cases)
        EXPECT_NE(error_of(space).find(message), std::string::npos) << space.dump() << ": " << error_of(space);
}

// --param NAME=VALUES: lists split on ',' (or on '|' when the text holds one), ranges LO..HI with an
// optional kind; each gives the JSON entry a space file would hold, and bad texts are named.
TEST(SweepParam, ShorthandGivesTheSpaceEntry) {
    const std::pair<std::string, json> cases[] = {
        {"optimizer=adam,sgd", json::parse(R"(["adam", "sgd"])")},
        {"hidden=512,256|128", json::parse(R"(["512,256", "128"])")},
        {"hidden=64", json::parse(R"(["64"])")},
        {"lr=1e-4..1e-1:log", json::parse(R"({"log_uniform": [0.0001, 0.1]})")},
        {"dropout=0.1..0.5", json::parse(R"({"uniform": [0.1, 0.5]})")},
        {"batch-size=16..256:int", json::parse(R"({"int": [16, 256]})")},
    };
    for (const auto& [text, expected] : cases) {
        const auto [name, value] = parse_param(text);
        EXPECT_EQ(name, text.substr(0, text.find('='))) << text;
        EXPECT_EQ(value.dump(), expected.dump()) << text;  // as text: 16 and 16.0 differ for an "int" range
        json entry = json::object();
        entry[name] = value;
        EXPECT_NO_THROW((void)parse_sweep_space(entry, kFlags)) << text << ": the entry is one the space takes";
    }
    EXPECT_EQ(parse_param("--lr=0.1,0.01").first, "lr") << "a leading -- as train's flags are spelt";
    // The entry goes through the space's own checks.
    const auto [lr_name, lr_value] = parse_param("lr=1e-4..1e-1:log");
    json entry = json::object();
    entry[lr_name] = lr_value;
    const SweepSpace space = parse_sweep_space(entry, kFlags);
    ASSERT_EQ(space.parameters.size(), 1u);
    EXPECT_EQ(space.parameters[0].kind, SweepParameter::Kind::LogUniform);
    const auto error = [](const std::string& text) -> std::string {
        try {
            (void)parse_param(text);
        } catch (const Error& e) {
            return e.what();
        }
        return "<no error>";
    };
    const std::pair<std::string, std::string> errors[] = {
        {"lr", "--param 'lr': expected NAME=VALUES"},
        {"=0.1", "--param '=0.1': expected NAME=VALUES"},
        {"lr=", "--param 'lr=': expected NAME=VALUES"},
        {"optimizer=adam,,sgd", "--param 'optimizer=adam,,sgd': an empty value in the list (values are separated by ',')"},
        {"hidden=64|", "an empty value in the list (values are separated by '|')"},
        {"lr=x..1", "--param 'lr=x..1': the low end of the range, 'x', is not a number"},
        {"lr=0.1..", "the high end of the range, '', is not a number"},
        {"lr=1..2:exp", "--param 'lr=1..2:exp': unknown range kind ':exp'"},
        {"batch-size=1.5..8:int", "an :int range takes whole-number ends, got 1.5"},
        {"lr=0.1, 0.01", "the value ' 0.01' has spaces around it"},
    };
    for (const auto& [text, message] : errors) EXPECT_NE(error(text).find(message), std::string::npos) << text << ": " << error(text);
}

TEST(SweepSpace, GridIsEveryCombinationInKeyOrderTheLastFastest) {
    const SweepSpace space =
        parse_sweep_space(json::parse(R"({"optimizer": ["adam", "sgd"], "lr": [0.1, 0.01, 0.001]})"), kFlags);
    EXPECT_FALSE(space.has_distributions());
    EXPECT_EQ(space.grid_size(), 6u);
    const std::vector<Trial> trials = grid_trials(space);
    ASSERT_EQ(trials.size(), 6u);
    // Keys sorted: lr, then optimizer (fastest).
    EXPECT_EQ(trials[0].arguments(), "--lr 0.1 --optimizer adam");
    EXPECT_EQ(trials[1].arguments(), "--lr 0.1 --optimizer sgd");
    EXPECT_EQ(trials[5].arguments(), "--lr 0.001 --optimizer sgd");
    std::set<std::string> distinct;
    for (const Trial& t : trials) distinct.insert(t.arguments());
    EXPECT_EQ(distinct.size(), 6u);
    EXPECT_EQ(trials[3].index, 3);
    // A value with a space is quoted for the shell.
    EXPECT_EQ(grid_trials(parse_sweep_space(json::parse(R"({"hidden": ["64 32"]})"), kFlags))[0].arguments(),
              "--hidden '64 32'");
    EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
    EXPECT_EQ(shell_quote(""), "''");
    EXPECT_EQ(shell_quote("512,256"), "512,256");
    // Too many combinations, and distributions, are refused.
    EXPECT_THROW((void)grid_trials(space, 5), Error);
    EXPECT_THROW((void)grid_trials(parse_sweep_space(json::parse(R"({"lr": {"uniform": [0, 1]}})"), kFlags)), Error);
}

TEST(SweepSpace, RandomDrawsAreSeededAndInsideTheirRanges) {
    const SweepSpace space = parse_sweep_space(
        json::parse(R"({"lr": {"log_uniform": [1e-4, 1e-1]}, "dropout": {"uniform": [0.1, 0.5]},
                        "batch-size": {"int": [16, 20]}, "optimizer": {"choice": ["adam", "sgd"]}})"),
        kFlags);
    const std::vector<Trial> a = random_trials(space, 200, 7);
    ASSERT_EQ(a.size(), 200u);
    std::set<std::string> sizes, optimizers;
    double lr_min = 1, lr_max = 0;
    for (const Trial& t : a) {
        ASSERT_EQ(t.flags.size(), 4u);
        for (const auto& [flag, value] : t.flags) {
            if (flag == "lr") lr_min = std::min(lr_min, std::stod(value)), lr_max = std::max(lr_max, std::stod(value));
            if (flag == "dropout") {
                EXPECT_GE(std::stod(value), 0.1);
                EXPECT_LE(std::stod(value), 0.5);
            }
            if (flag == "batch-size") sizes.insert(value);
            if (flag == "optimizer") optimizers.insert(value);
        }
    }
    EXPECT_GE(lr_min, 1e-4);
    EXPECT_LE(lr_max, 1e-1);
    EXPECT_LT(lr_min, 1e-3) << "log-uniform reaches the low decade";
    EXPECT_GT(lr_max, 1e-2);
    EXPECT_EQ(sizes, (std::set<std::string>{"16", "17", "18", "19", "20"})) << "both ends of an int range are drawn";
    EXPECT_EQ(optimizers, (std::set<std::string>{"adam", "sgd"}));
    // The same seed, the same list; another seed, another.
    const std::vector<Trial> b = random_trials(space, 200, 7), c = random_trials(space, 200, 8);
    for (std::size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].arguments(), b[i].arguments());
    EXPECT_NE(a[0].arguments(), c[0].arguments());
    // A longer list starts with the shorter one.
    EXPECT_EQ(random_trials(space, 3, 7)[2].arguments(), a[2].arguments());
    EXPECT_THROW((void)random_trials(space, 0, 7), Error);
}

TEST(SuccessiveHalving, RungsAndPromotions) {
    EXPECT_EQ(halving_rungs(1, 9, 3), (std::vector<int>{1, 3, 9}));
    EXPECT_EQ(halving_rungs(1, 10, 3), (std::vector<int>{1, 3, 9, 10}));
    EXPECT_EQ(halving_rungs(2, 2, 3), (std::vector<int>{2}));
    EXPECT_EQ(halving_rungs(1, 20, 4), (std::vector<int>{1, 4, 16, 20}));
    EXPECT_THROW((void)halving_rungs(0, 9, 3), Error);
    EXPECT_THROW((void)halving_rungs(10, 9, 3), Error);
    EXPECT_THROW((void)halving_rungs(1, 9, 1), Error);
    // A synthetic objective: trial k scores k % 5 / 10. Nine trials, eta 3: the three best go on.
    std::vector<std::pair<int, double>> scores;
    for (int k = 0; k < 9; ++k) scores.emplace_back(k, (k % 5) / 10.0);
    EXPECT_EQ(promote(scores, 9, 3), (std::vector<int>{4, 3, 8})) << "0.4, 0.3 and the first 0.3 after it";
    // Failed trials are not in `scores`; the rung's size still sets how many go on.
    EXPECT_EQ(promote({{2, 0.5}, {7, 0.9}}, 9, 3), (std::vector<int>{7, 2}));
    EXPECT_EQ(promote({{2, 0.5}, {7, 0.9}}, 2, 3), (std::vector<int>{7})) << "at least one";
    EXPECT_TRUE(promote({}, 5, 3).empty());
    // Ties keep the list's order.
    EXPECT_EQ(promote({{5, 0.5}, {1, 0.5}, {3, 0.5}}, 3, 2), (std::vector<int>{5, 1}));
}

TEST(SweepSpace, ShardsAreDisjointAndCover) {
    const SweepSpace space = parse_sweep_space(json::parse(R"({"lr": [1, 2, 3, 4, 5, 6, 7]})"), kFlags);
    const std::vector<Trial> all = grid_trials(space);
    std::multiset<int> seen;
    for (int s = 1; s <= 3; ++s)
        for (const Trial& t : shard_trials(all, s, 3)) {
            EXPECT_EQ(t.index % 3, s - 1);
            seen.insert(t.index);
        }
    EXPECT_EQ(seen, (std::multiset<int>{0, 1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(parse_shard("2/4"), (std::pair<int, int>{2, 4}));
    for (const char* bad : {"0/4", "5/4", "4", "a/b", "1/0", "-1/2", ""})
        EXPECT_THROW((void)parse_shard(bad), Error) << bad;
}

}  // namespace
