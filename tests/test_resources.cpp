// Resource failures: a model too large for the GPU or for the host fails with one cumnist::Error
// naming the bytes requested and what to try (a smaller batch size or model), never with
// std::bad_alloc, a CUDA error code or the process killed.
#include <gtest/gtest.h>
#include <sys/sysinfo.h>

#include <cstdint>
#include <limits>
#include <new>
#include <string>
#include <vector>

#ifdef CUMNIST_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include "cumnist/buffer.h"
#include "cumnist/trainer.h"
#include "test_support.h"

namespace cumnist {
namespace {

constexpr int kWidest = 1 << 16;  // the widest hidden layer a model may have
// One kWidest x kWidest weight matrix: 2^32 floats, 16 GiB.
constexpr std::size_t kWidestLayerBytes = std::size_t{kWidest} * kWidest * sizeof(float);

// 28x28 images of anything: the trainer fails before it reads them.
Dataset tiny_dataset() {
    Dataset ds;
    ds.name = "tiny";
    ds.n = 64;
    ds.rows = 28;
    ds.cols = 28;
    ds.images.assign(static_cast<std::size_t>(ds.n) * 784, 7);
    ds.labels.assign(static_cast<std::size_t>(ds.n), 3);
    return ds;
}

// A 784-input model whose parameters alone take more than `bytes`: enough 65536-wide hidden
// layers (16 GiB of weights each), far from overflowing size_t.
MlpConfig model_larger_than(std::size_t bytes) {
    MlpConfig m;
    m.hidden.assign(bytes / kWidestLayerBytes + 2, kWidest);
    return m;
}

// Constructing a Trainer for `model` on `device` must throw cumnist::Error saying `what`, naming
// the bytes of one parameter-sized buffer and suggesting a smaller batch size or model.
void expect_clear_out_of_memory(const MlpConfig& model, Device device, const std::string& what) {
    const std::size_t bytes = parameter_count(model) * sizeof(float);
    TrainConfig t;
    t.device = device;
    t.batch = 32;
    try {
        Trainer trainer(model, OptimizerConfig{}, t, tiny_dataset());
        ADD_FAILURE() << "a Trainer for " << model.describe() << " (" << bytes << " bytes of parameters) was built";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find(what), std::string::npos) << msg;
        EXPECT_NE(msg.find(std::to_string(bytes) + " bytes"), std::string::npos) << "the bytes requested: " << msg;
        EXPECT_NE(msg.find("--batch-size"), std::string::npos) << msg;
        EXPECT_NE(msg.find("--hidden"), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
        EXPECT_EQ(msg.find("check '"), std::string::npos) << "reported as an internal check: " << msg;
    } catch (const std::bad_alloc&) {
        ADD_FAILURE() << "std::bad_alloc escaped instead of a cumnist::Error naming the size";
    }
}

TEST(Resources, ModelLargerThanTheGpuFailsWithTheBytesAndWhatToTry) {
    CUMNIST_SKIP_WITHOUT_GPU();
#ifdef CUMNIST_WITH_CUDA
    cudaDeviceProp prop{};
    ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
    const std::size_t total = prop.totalGlobalMem;
    const MlpConfig model = model_larger_than(total);
    ASSERT_GT(parameter_count(model) * sizeof(float), total);
    expect_clear_out_of_memory(model, Device::Cuda, "out of GPU memory");
    // The failed allocation leaves the GPU usable.
    std::vector<float> values(1000, 1.5f);
    const Buffer<float> b = Buffer<float>::from_host(values, Device::Cuda);
    EXPECT_EQ(b.to_host(), values);
#endif
}

TEST(Resources, ModelLargerThanTheHostMemoryFailsWithTheBytesAndWhatToTry) {
    struct sysinfo info {};
    ASSERT_EQ(::sysinfo(&info), 0);
    const std::size_t ram_and_swap =
        (static_cast<std::size_t>(info.totalram) + static_cast<std::size_t>(info.totalswap)) * info.mem_unit;
    const MlpConfig model = model_larger_than(ram_and_swap);
    ASSERT_GT(parameter_count(model) * sizeof(float), ram_and_swap);
    expect_clear_out_of_memory(model, Device::Cpu, "out of host memory");
}

TEST(Resources, HostAllocationsTooLargeForTheAddressSpaceThrowError) {
    // Sizes near SIZE_MAX once wrapped around to a tiny block when rounded up to the alignment.
    for (const std::size_t bytes : {std::numeric_limits<std::size_t>::max(), std::numeric_limits<std::size_t>::max() - 10,
                                    std::size_t{1} << 62}) {
        try {
            void* p = memory::allocate(bytes, Device::Cpu);
            memory::release(p, Device::Cpu);
            ADD_FAILURE() << "allocated " << bytes << " bytes";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(std::to_string(bytes) + " bytes"), std::string::npos) << e.what();
        }
    }
}

}  // namespace
}  // namespace cumnist
