// Optimizer steps over the whole flat parameter buffer, one launch each. The per-element update is
// philox.h's adam_update / sgd_update / rmsprop_update, the very functions the CPU backend runs.
#include "backend.h"
#include "cuda_common.cuh"
#include "cumnist/philox.h"

namespace cumnist::cuda {

namespace {

// The end of a training step, folded into its optimizer kernel (ops.h, `advance`): once every
// block of the grid is done, advance[0] (the step counter) and advance[1] (the batch index) are
// incremented and advance[2], the blocks' ticket, is reset to 0. Each block takes a ticket after
// all its threads are done, and so after its reads of the step counter (Adam reads it first
// thing); the block that draws the last ticket is then the only one left, and it does the
// increments. The fences order each block's reads before its ticket, and the increments after
// the last ticket. Called at the end of the kernel by every thread (it has a barrier).
__device__ __forceinline__ void advance_after_last_block(uint64_t* advance) {
    if (advance == nullptr) return;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        auto* ticket = reinterpret_cast<unsigned long long*>(advance + 2);
        const unsigned long long drawn = atomicAdd(ticket, 1ull);
        if (drawn == gridDim.x - 1ull) {
            __threadfence();
            advance[0] += 1;
            advance[1] += 1;
            *ticket = 0;
        }
    }
}

// Adam with t = *step + 1 read from the device (so a captured step needs no new arguments):
//   α = lr · √(1 − β2ᵗ) / (1 − β1ᵗ)          once per block, by thread 0 (adam_alpha)
//   m ← m + (1 − β1)(g − m);  v ← v + (1 − β2)(g² − v);  w ← w − α · m / (√v + ε)   per element
static __global__ void adam_kernel(float* __restrict__ w, float* __restrict__ m, float* __restrict__ v,
                                   const float* __restrict__ g, std::size_t count, float lr,
                                   const float* __restrict__ lr_scale, float beta1, float beta2, float epsilon,
                                   const uint64_t* step, uint64_t* advance) {
    __shared__ float s_alpha;
    if (threadIdx.x == 0) s_alpha = adam_alpha(scaled_rate(lr, lr_scale), beta1, beta2, *step + 1);
    __syncthreads();
    const float alpha = s_alpha;
    for (std::size_t i = grid_thread_index(); i < count; i += grid_stride()) {
        float wi = w[i], mi = m[i], vi = v[i];
        adam_update(wi, mi, vi, g[i], alpha, beta1, beta2, epsilon);
        w[i] = wi;
        m[i] = mi;
        v[i] = vi;
    }
    advance_after_last_block(advance);
}

// SGD with momentum μ: velocity ← μ · velocity − lr · g;  w ← w + velocity.
static __global__ void sgd_kernel(float* __restrict__ w, float* __restrict__ velocity, const float* __restrict__ g,
                                  std::size_t count, float lr, const float* __restrict__ lr_scale, float momentum,
                                  uint64_t* advance) {
    const float rate = scaled_rate(lr, lr_scale);
    for (std::size_t i = grid_thread_index(); i < count; i += grid_stride()) {
        float wi = w[i], vel = velocity[i];
        sgd_update(wi, vel, g[i], rate, momentum);
        w[i] = wi;
        velocity[i] = vel;
    }
    advance_after_last_block(advance);
}

// RMSprop: s ← ρ s + (1 − ρ) g²;  w ← w − lr · g / (√s + ε).
static __global__ void rmsprop_kernel(float* __restrict__ w, float* __restrict__ s, const float* __restrict__ g,
                                      std::size_t count, float lr, const float* __restrict__ lr_scale, float rho,
                                      float epsilon, uint64_t* advance) {
    const float rate = scaled_rate(lr, lr_scale);
    for (std::size_t i = grid_thread_index(); i < count; i += grid_stride()) {
        float wi = w[i], si = s[i];
        rmsprop_update(wi, si, g[i], rate, rho, epsilon);
        w[i] = wi;
        s[i] = si;
    }
    advance_after_last_block(advance);
}

}  // namespace

// Each launch has at least one block (grid_for), so a step with an advance always advances.
void adam_step(float* w, float* m, float* v, const float* g, std::size_t count, float lr, const float* lr_scale,
               float beta1, float beta2, float epsilon, const uint64_t* step, uint64_t* advance) {
    adam_kernel<<<grid_for(count), kBlockSize, 0, context().stream()>>>(w, m, v, g, count, lr, lr_scale, beta1, beta2,
                                                                          epsilon, step, advance);
    CUMNIST_CHECK_LAUNCH();
}

void sgd_step(float* w, float* velocity, const float* g, std::size_t count, float lr, const float* lr_scale,
              float momentum, uint64_t* advance) {
    sgd_kernel<<<grid_for(count), kBlockSize, 0, context().stream()>>>(w, velocity, g, count, lr, lr_scale, momentum,
                                                                         advance);
    CUMNIST_CHECK_LAUNCH();
}

void rmsprop_step(float* w, float* s, const float* g, std::size_t count, float lr, const float* lr_scale, float rho,
                  float epsilon, uint64_t* advance) {
    rmsprop_kernel<<<grid_for(count), kBlockSize, 0, context().stream()>>>(w, s, g, count, lr, lr_scale, rho, epsilon,
                                                                             advance);
    CUMNIST_CHECK_LAUNCH();
}

}  // namespace cumnist::cuda
