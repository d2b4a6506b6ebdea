// Learning-rate schedules and early stopping (schedule.h).
#include "cumnist/schedule.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "cumnist/error.h"

namespace cumnist {

namespace {
constexpr double kPi = 3.14159265358979323846;
}

ScheduleKind parse_schedule_kind(const std::string& name) {
    if (name == "constant") return ScheduleKind::Constant;
    if (name == "step") return ScheduleKind::Step;
    if (name == "cosine") return ScheduleKind::Cosine;
    if (name == "plateau") return ScheduleKind::Plateau;
    throw Error(fmt::format("--lr-schedule: unknown schedule '{}' (expected constant, step, cosine or plateau)", name));
}

const char* to_string(ScheduleKind kind) {
    switch (kind) {
        case ScheduleKind::Constant: return "constant";
        case ScheduleKind::Step: return "step";
        case ScheduleKind::Cosine: return "cosine";
        case ScheduleKind::Plateau: return "plateau";
    }
    return "?";
}

void LrSchedule::validate() const {
    auto fraction = [](double v) { return std::isfinite(v) && v > 0.0 && v < 1.0; };
    switch (kind) {
        case ScheduleKind::Constant: break;
        case ScheduleKind::Step:
            if (step_epochs < 1) throw Error(fmt::format("--lr-step-epochs must be at least 1, got {}", step_epochs));
            if (!fraction(gamma)) throw Error(fmt::format("--lr-gamma must be in (0, 1), got {}", gamma));
            break;
        case ScheduleKind::Cosine:
            if (warmup_epochs < 0) throw Error(fmt::format("--lr-warmup-epochs must be 0 or more, got {}", warmup_epochs));
            if (!(std::isfinite(min_factor) && min_factor >= 0.0 && min_factor < 1.0))
                throw Error(fmt::format("--lr-min-factor must be in [0, 1), got {}", min_factor));
            break;
        case ScheduleKind::Plateau:
            if (patience < 1) throw Error(fmt::format("--lr-patience must be at least 1, got {}", patience));
            if (!fraction(gamma)) throw Error(fmt::format("--lr-gamma must be in (0, 1), got {}", gamma));
            if (!(std::isfinite(min_delta) && min_delta >= 0.0))
                throw Error(fmt::format("--lr-min-delta must be 0 or more, got {}", min_delta));
            break;
    }
}

std::string LrSchedule::describe() const {
    switch (kind) {
        case ScheduleKind::Constant: return "constant";
        case ScheduleKind::Step:
            return step_epochs == 1 ? fmt::format("step (x{} every epoch)", gamma)
                                    : fmt::format("step (x{} every {} epochs)", gamma, step_epochs);
        case ScheduleKind::Cosine:
            return fmt::format("cosine ({}falling towards x{})",
                               warmup_epochs > 0 ? fmt::format("linear warm-up over {} epoch{}, ", warmup_epochs,
                                                               warmup_epochs == 1 ? "" : "s")
                                                 : "",
                               min_factor);
        case ScheduleKind::Plateau:
            return fmt::format("plateau (x{} after {} epoch{} without a validation loss {} below the best)", gamma,
                               patience, patience == 1 ? "" : "s", min_delta);
    }
    return "?";
}

double LrSchedule::factor(int epoch, int epochs, const std::vector<double>& losses) const {
    switch (kind) {
        case ScheduleKind::Constant: return 1.0;
        case ScheduleKind::Step: return std::pow(gamma, (epoch - 1) / step_epochs);
        case ScheduleKind::Cosine: {
            if (epoch <= warmup_epochs) return static_cast<double>(epoch) / (warmup_epochs + 1);
            const int span = epochs - warmup_epochs;  // the epochs after the warm-up
            const double progress = std::min(1.0, static_cast<double>(epoch - warmup_epochs - 1) / span);
            return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + std::cos(kPi * progress));
        }
        case ScheduleKind::Plateau: {
            double f = 1.0, best = std::numeric_limits<double>::infinity();
            int wait = 0;
            for (std::size_t i = 0; i + 1 < static_cast<std::size_t>(epoch) && i < losses.size(); ++i) {
                if (losses[i] < best - min_delta) {
                    best = losses[i];
                    wait = 0;
                } else if (++wait >= patience) {
                    f *= gamma;
                    wait = 0;
                }
            }
            return f;
        }
    }
    return 1.0;
}

bool LrSchedule::operator==(const LrSchedule& o) const { return schedule_to_json(*this) == schedule_to_json(o); }

nlohmann::json schedule_to_json(const LrSchedule& s) {
    nlohmann::json j = {{"name", to_string(s.kind)}};
    switch (s.kind) {
        case ScheduleKind::Constant: break;
        case ScheduleKind::Step: j["step_epochs"] = s.step_epochs, j["gamma"] = s.gamma; break;
        case ScheduleKind::Cosine: j["warmup_epochs"] = s.warmup_epochs, j["min_factor"] = s.min_factor; break;
        case ScheduleKind::Plateau:
            j["patience"] = s.patience, j["gamma"] = s.gamma, j["min_delta"] = s.min_delta;
            break;
    }
    return j;
}

LrSchedule schedule_from_json(const nlohmann::json& j) {
    auto fail = [&](const std::string& why) {
        throw Error(fmt::format("learning-rate schedule {}: {}", j.dump().substr(0, 120), why));
    };
    if (!j.is_object() || !j.contains("name") || !j.at("name").is_string()) fail("expected an object with a \"name\"");
    LrSchedule s;
    try {
        s.kind = parse_schedule_kind(j.at("name").get<std::string>());
    } catch (const Error& e) {
        fail(e.what());
    }
    auto integer = [&](const char* key, int& out) {
        if (!j.contains(key)) fail(fmt::format("\"{}\" is missing", key));
        const nlohmann::json& v = j.at(key);
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 30))
            fail(fmt::format("\"{}\" is {}, expected an integer", key, v.dump()));
        out = v.get<int>();
    };
    auto number = [&](const char* key, double& out) {
        if (!j.contains(key)) fail(fmt::format("\"{}\" is missing", key));
        const nlohmann::json& v = j.at(key);
        if (!v.is_number()) fail(fmt::format("\"{}\" is {}, expected a number", key, v.dump()));
        out = v.get<double>();
    };
    switch (s.kind) {
        case ScheduleKind::Constant: break;
        case ScheduleKind::Step: integer("step_epochs", s.step_epochs), number("gamma", s.gamma); break;
        case ScheduleKind::Cosine: integer("warmup_epochs", s.warmup_epochs), number("min_factor", s.min_factor); break;
        case ScheduleKind::Plateau:
            integer("patience", s.patience), number("gamma", s.gamma), number("min_delta", s.min_delta);
            break;
    }
    try {
        s.validate();
    } catch (const Error& e) {
        fail(e.what());
    }
    return s;
}

bool should_stop_early(const std::vector<double>& losses, int patience, double min_delta) {
    if (patience <= 0 || static_cast<int>(losses.size()) <= patience) return false;
    double best_before = std::numeric_limits<double>::infinity();
    const std::size_t recent = losses.size() - static_cast<std::size_t>(patience);
    for (std::size_t i = 0; i < recent; ++i) best_before = std::min(best_before, losses[i]);
    for (std::size_t i = recent; i < losses.size(); ++i)
        if (losses[i] < best_before - min_delta) return false;
    return true;
}

}  // namespace cumnist
