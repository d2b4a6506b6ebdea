// Optimizers: state allocation and the one op call per step.
#include "cumnist/optim.h"

#include <cmath>

namespace cumnist {

const char* to_string(OptimizerKind kind) {
    switch (kind) {
        case OptimizerKind::Adam: return "adam";
        case OptimizerKind::Sgd: return "sgd";
        case OptimizerKind::RmsProp: return "rmsprop";
    }
    return "?";
}

OptimizerKind parse_optimizer(const std::string& name) {
    if (name == "adam") return OptimizerKind::Adam;
    if (name == "sgd") return OptimizerKind::Sgd;
    if (name == "rmsprop") return OptimizerKind::RmsProp;
    throw Error(fmt::format("unknown optimizer '{}' (expected adam, sgd or rmsprop)", name));
}

std::string OptimizerConfig::describe() const {
    switch (kind) {
        case OptimizerKind::Adam:
            return fmt::format("adam (lr {}, beta1 {}, beta2 {}, epsilon {})", lr, beta1, beta2, epsilon);
        case OptimizerKind::Sgd: return fmt::format("sgd (lr {}, momentum {})", lr, momentum);
        case OptimizerKind::RmsProp: return fmt::format("rmsprop (lr {}, rho {}, epsilon {})", lr, rho, epsilon);
    }
    return "?";
}

void OptimizerConfig::validate() const {
    if (!(std::isfinite(lr) && lr > 0.0f)) throw Error(fmt::format("learning rate must be a positive number, got {}", lr));
    if (!(momentum >= 0.0f && momentum < 1.0f)) throw Error(fmt::format("momentum must be in [0, 1), got {}", momentum));
    if (!(beta1 >= 0.0f && beta1 < 1.0f && beta2 >= 0.0f && beta2 < 1.0f))
        throw Error(fmt::format("Adam betas must be in [0, 1), got {} and {}", beta1, beta2));
    if (!(rho >= 0.0f && rho < 1.0f)) throw Error(fmt::format("rho must be in [0, 1), got {}", rho));
    if (!(std::isfinite(epsilon) && epsilon > 0.0f))
        throw Error(fmt::format("epsilon must be a positive number, got {}", epsilon));
}

Optimizer::Optimizer(OptimizerConfig config, std::size_t n_params, Device device)
    : m_config(config), m_lr_scale(1, device) {
    m_lr_scale.copy_from_host(&m_lr_scale_host, 1);
    m_config.validate();
    const std::size_t n_state = m_config.kind == OptimizerKind::Adam ? 2 : 1;
    for (std::size_t i = 0; i < n_state; ++i) {
        m_state.emplace_back(n_params, device);
        m_state.back().zero();
    }
}

std::vector<std::string> Optimizer::state_names() const {
    switch (m_config.kind) {
        case OptimizerKind::Adam: return {"adam.m", "adam.v"};
        case OptimizerKind::Sgd: return {"sgd.velocity"};
        case OptimizerKind::RmsProp: return {"rmsprop.s"};
    }
    return {};
}

void Optimizer::set_lr_scale(float scale) {
    if (!(std::isfinite(scale) && scale >= 0.0f))
        throw Error(fmt::format("learning-rate factor must be a number of 0 or more, got {}", scale));
    m_lr_scale_host = scale;
    m_lr_scale.copy_from_host(&m_lr_scale_host, 1);
}

void Optimizer::step(Buffer<float>& params, const Buffer<float>& grads, const uint64_t* step, uint64_t* advance) {
    switch (m_config.kind) {
        case OptimizerKind::Adam:
            ops::adam_step(params.flat(), m_state[0].flat(), m_state[1].flat(), grads.flat(),
                           {m_config.lr, m_config.beta1, m_config.beta2, m_config.epsilon, m_lr_scale.data()}, step, advance);
            break;
        case OptimizerKind::Sgd:
            ops::sgd_step(params.flat(), m_state[0].flat(), grads.flat(),
                          {m_config.lr, m_config.momentum, m_lr_scale.data()}, advance);
            break;
        case OptimizerKind::RmsProp:
            ops::rmsprop_step(params.flat(), m_state[0].flat(), grads.flat(),
                              {m_config.lr, m_config.rho, m_config.epsilon, m_lr_scale.data()}, advance);
            break;
    }
}

}  // namespace cumnist
