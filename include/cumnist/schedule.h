// Learning-rate schedules and early stopping, per epoch. The rate of epoch e (1-based) of E is
// lr · factor(e), the factor held in device memory for the steps to read (Optimizer::set_lr_scale):
//   constant  1
//   step      gamma ^ floor((e − 1) / step_epochs)
//   cosine    e / (warmup + 1) for e ≤ warmup (a linear warm-up towards the full rate), then
//             min + (1 − min) · (1 + cos(π · (e − warmup − 1) / (E − warmup))) / 2,
//             1 at the first epoch after the warm-up, falling towards `min`, which the epoch after
//             the last would reach (PyTorch's CosineAnnealingLR with T_max = E − warmup)
//   plateau   starts at 1 and is multiplied by `gamma` whenever the validation loss has not fallen
//             by more than min_delta below its best for `patience` epochs (Keras' ReduceLROnPlateau,
//             no cooldown)
// Every factor is a function of the schedule, the epoch and the validation losses of the epochs
// before it, which checkpoints keep: a resumed run continues with exactly the rates it would have
// used.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace cumnist {

enum class ScheduleKind { Constant, Step, Cosine, Plateau };

struct LrSchedule {
    ScheduleKind kind = ScheduleKind::Constant;
    int step_epochs = 10;     // step: epochs between decays
    double gamma = 0.1;       // step, plateau: the factor each decay multiplies by
    int warmup_epochs = 0;    // cosine: linear warm-up epochs
    double min_factor = 0.0;  // cosine: the factor the curve falls towards (reached after the last epoch)
    int patience = 2;         // plateau: epochs without improvement before a decay
    double min_delta = 1e-4;  // plateau: the improvement that counts

    // Throws Error naming the bad setting.
    void validate() const;
    // "constant", "step (every 10 epochs, gamma 0.1)", "cosine (warm-up 2 epochs, min 0)", ...
    std::string describe() const;
    // The factor for epoch `epoch` (1-based) of `epochs`; `losses` are the validation losses of
    // epochs 1 .. epoch − 1 (plateau only).
    double factor(int epoch, int epochs, const std::vector<double>& losses) const;
    bool operator==(const LrSchedule& o) const;
    bool operator!=(const LrSchedule& o) const { return !(*this == o); }
};

ScheduleKind parse_schedule_kind(const std::string& name);  // "constant" | "step" | "cosine" | "plateau"
const char* to_string(ScheduleKind kind);

// As checkpoints carry it: {"name": "cosine", "warmup_epochs": 2, "min_factor": 0, ...} (only the
// settings of its kind), and back (validated; throws Error saying what is wrong).
nlohmann::json schedule_to_json(const LrSchedule& s);
LrSchedule schedule_from_json(const nlohmann::json& j);

// Early stopping on the validation loss: true when none of the last `patience` losses fell below
// the best before them (by more than min_delta). patience 0: never.
bool should_stop_early(const std::vector<double>& losses, int patience, double min_delta = 0.0);

}  // namespace cumnist
