// Buffer<T>: an owning, move-only array of trivially copyable T on one Device, and MatrixView,
// a non-owning row-major (rows, cols) window onto one. Copies between devices are explicit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "cumnist/device.h"
#include "cumnist/error.h"

namespace cumnist {

namespace memory {
// Raw allocation on a device: 64-byte aligned host memory, or cudaMalloc. Never returns null for
// bytes > 0; throws cumnist::Error naming the size (and, on the GPU, the free memory).
void* allocate(std::size_t bytes, Device device);
void release(void* ptr, Device device) noexcept;
// Host memory that copies to `device` read from: page-locked (cudaMallocHost) for the GPU, so that
// the copies are asynchronous; plain for the CPU. Throws cumnist::Error naming the size when it
// cannot be had.
void* allocate_staging(std::size_t bytes, Device device);
void release_staging(void* ptr, Device device) noexcept;
// Copies bytes between any two devices (synchronous with respect to the host).
void copy(void* dst, Device dst_device, const void* src, Device src_device, std::size_t bytes);
// Sets bytes to zero.
void zero(void* ptr, Device device, std::size_t bytes);
// How many allocations allocate() and allocate_staging() have made since start-up, on any device
// (tests use it to show that the training step allocates nothing).
std::size_t allocation_count();
}  // namespace memory

// The most elements a MatrixView row (and so a flat buffer view) can hold: its counts are int.
constexpr std::size_t kMaxViewElements = 2147483647;

template <class T>
struct MatrixView {
    T* data = nullptr;
    int rows = 0;
    int cols = 0;
    Device device = Device::Cpu;

    std::size_t size() const { return static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols); }
    operator MatrixView<const T>() const { return {data, rows, cols, device}; }
    // Rows [first, first + count) of this view.
    MatrixView row_range(int first, int count) const {
        return {data + static_cast<std::size_t>(first) * cols, count, cols, device};
    }
};

template <class T>
class Buffer {
    static_assert(std::is_trivially_copyable_v<T>, "Buffer holds plain data only");

public:
    Buffer() = default;
    Buffer(std::size_t size, Device device) : m_size(size), m_device(device) {
        if (size > 0) m_data = static_cast<T*>(memory::allocate(size * sizeof(T), device));
    }
    ~Buffer() { reset(); }

    Buffer(Buffer&& other) noexcept
        : m_data(std::exchange(other.m_data, nullptr)), m_size(std::exchange(other.m_size, 0)), m_device(other.m_device) {}
    Buffer& operator=(Buffer&& other) noexcept {
        if (this != &other) {
            reset();
            m_data = std::exchange(other.m_data, nullptr);
            m_size = std::exchange(other.m_size, 0);
            m_device = other.m_device;
        }
        return *this;
    }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;

    static Buffer from_host(const T* src, std::size_t size, Device device) {
        Buffer b(size, device);
        if (size > 0) memory::copy(b.m_data, device, src, Device::Cpu, size * sizeof(T));
        return b;
    }
    static Buffer from_host(const std::vector<T>& src, Device device) { return from_host(src.data(), src.size(), device); }

    // An explicit deep copy onto `device`.
    Buffer copy_to(Device device) const {
        Buffer b(m_size, device);
        if (m_size > 0) memory::copy(b.m_data, device, m_data, m_device, m_size * sizeof(T));
        return b;
    }
    std::vector<T> to_host() const {
        std::vector<T> out(m_size);
        if (m_size > 0) memory::copy(out.data(), Device::Cpu, m_data, m_device, m_size * sizeof(T));
        return out;
    }
    void copy_from_host(const T* src, std::size_t count, std::size_t offset = 0) {
        CUMNIST_CHECK(offset + count <= m_size, "copy of {} elements at {} into a buffer of {}", count, offset, m_size);
        if (count > 0) memory::copy(m_data + offset, m_device, src, Device::Cpu, count * sizeof(T));
    }
    void zero() {
        if (m_size > 0) memory::zero(m_data, m_device, m_size * sizeof(T));
    }

    T* data() { return m_data; }
    const T* data() const { return m_data; }
    std::size_t size() const { return m_size; }
    std::size_t bytes() const { return m_size * sizeof(T); }
    Device device() const { return m_device; }

    MatrixView<T> view(int rows, int cols, std::size_t offset = 0) {
        CUMNIST_CHECK(offset + static_cast<std::size_t>(rows) * cols <= m_size, "view ({}, {}) at {} exceeds buffer of {}",
                      rows, cols, offset, m_size);
        return {m_data + offset, rows, cols, m_device};
    }
    MatrixView<const T> view(int rows, int cols, std::size_t offset = 0) const {
        CUMNIST_CHECK(offset + static_cast<std::size_t>(rows) * cols <= m_size, "view ({}, {}) at {} exceeds buffer of {}",
                      rows, cols, offset, m_size);
        return {m_data + offset, rows, cols, m_device};
    }
    // The whole buffer as one (1, size) row. Views count in int: a larger buffer is refused rather
    // than wrapped (models are validated against this limit before anything is allocated).
    MatrixView<T> flat() {
        CUMNIST_CHECK(m_size <= kMaxViewElements, "a buffer of {} elements has no flat view (at most {})", m_size,
                      kMaxViewElements);
        return {m_data, 1, static_cast<int>(m_size), m_device};
    }
    MatrixView<const T> flat() const {
        CUMNIST_CHECK(m_size <= kMaxViewElements, "a buffer of {} elements has no flat view (at most {})", m_size,
                      kMaxViewElements);
        return {m_data, 1, static_cast<int>(m_size), m_device};
    }

private:
    void reset() noexcept {
        if (m_data) memory::release(m_data, m_device);
        m_data = nullptr;
        m_size = 0;
    }

    T* m_data = nullptr;
    std::size_t m_size = 0;
    Device m_device = Device::Cpu;
};

}  // namespace cumnist
