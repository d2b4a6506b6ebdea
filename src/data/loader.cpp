// BatchLoader: one producer thread, one consumer, a fixed set of slots. Every wait is on one
// condition variable with a predicate that includes cancellation and shutdown, so no call waits
// forever once the loader is stopped, restarted or destroyed.
#include "cumnist/loader.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cumnist/buffer.h"
#include "cumnist/error.h"

namespace cumnist {

void BatchLoader::PinnedDeleter::operator()(uint8_t* p) const noexcept { memory::release_staging(p, device); }

BatchLoader::BatchLoader(const Dataset& data, int batch, int slots, Device device, SlotFence fence)
    : m_data(data),
      m_batch(batch),
      m_slots(slots),
      m_features(data.features()),
      m_fence(std::move(fence)),
      m_memory(nullptr, PinnedDeleter{device}) {
    CUMNIST_CHECK(batch >= 1 && slots >= 1, "BatchLoader: batch {} and slots {} must be at least 1", batch, slots);
    CUMNIST_CHECK(data.n >= 1 && m_features >= 1, "BatchLoader: {} holds no samples", data.name);
    CUMNIST_CHECK(data.images.size() == static_cast<std::size_t>(data.n) * m_features &&
                      data.labels.size() == static_cast<std::size_t>(data.n),
                  "BatchLoader: {} holds {} pixels and {} labels for {} samples of {} pixels", data.name,
                  data.images.size(), data.labels.size(), data.n, m_features);
    const std::size_t rows = static_cast<std::size_t>(slots) * static_cast<std::size_t>(batch);
    const std::size_t bytes = rows * static_cast<std::size_t>(m_features) + rows;
    // Page-locked on the GPU, so that the trainer's copies out of the slots are asynchronous.
    void* raw = memory::allocate_staging(bytes, device);
    m_memory.reset(static_cast<uint8_t*>(raw));
    m_images = m_memory.get();
    m_labels = m_images + rows * static_cast<std::size_t>(m_features);
    m_order.resize(static_cast<std::size_t>(data.n));
    for (int i = 0; i < data.n; ++i) m_order[static_cast<std::size_t>(i)] = i;  // until the first start()
    m_state.assign(static_cast<std::size_t>(slots), SlotState::Free);
    m_slot_batch.assign(static_cast<std::size_t>(slots), -1);
    m_thread = std::thread([this] { run(); });
}

BatchLoader::~BatchLoader() {
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        m_shutdown = true;
    }
    m_changed.notify_all();
    if (m_thread.joinable()) m_thread.join();
}

void BatchLoader::cancel_and_wait(std::unique_lock<std::mutex>& lock) {
    m_cancel = true;
    m_changed.notify_all();
    // The thread finishes the slot it is filling (outside the lock), sees the cancellation and
    // drops that slot; after this it touches no slot and no order entry until the next start().
    m_changed.wait(lock, [&] { return !m_busy; });
}

void BatchLoader::start(const std::vector<int32_t>& order, int first, int last) {
    CUMNIST_CHECK(order.size() == static_cast<std::size_t>(m_data.n), "BatchLoader: an order of {} entries for {} samples",
                  order.size(), m_data.n);
    begin(&order, first, last);
}

void BatchLoader::restart(int first, int last) { begin(nullptr, first, last); }

void BatchLoader::begin(const std::vector<int32_t>* order, int first, int last) {
    const int n_batches = (m_data.n + m_batch - 1) / m_batch;
    CUMNIST_CHECK(0 <= first && first <= last && last <= n_batches, "BatchLoader: batches [{}, {}) of an epoch of {}",
                  first, last, n_batches);
    std::unique_lock<std::mutex> lock(m_mutex);
    cancel_and_wait(lock);
    if (order) std::copy(order->begin(), order->end(), m_order.begin());  // same size: no allocation
    std::fill(m_state.begin(), m_state.end(), SlotState::Free);
    std::fill(m_slot_batch.begin(), m_slot_batch.end(), -1);
    m_fill = m_take = first;
    m_last = last;
    m_error = nullptr;
    ++m_epoch;
    m_active = true;
    m_cancel = false;
    lock.unlock();
    m_changed.notify_all();
}

void BatchLoader::stop() {
    std::unique_lock<std::mutex> lock(m_mutex);
    cancel_and_wait(lock);
    std::fill(m_state.begin(), m_state.end(), SlotState::Free);
    ++m_epoch;
    m_active = false;
    m_cancel = false;
}

BatchLoader::Batch BatchLoader::next() {
    std::unique_lock<std::mutex> lock(m_mutex);
    CUMNIST_CHECK(m_active && m_take < m_last, "BatchLoader::next(): no batch left (batch {} of [.., {}){})", m_take,
                  m_last, m_active ? "" : ", no epoch started");
    const int b = m_take, slot = b % m_slots;
    // Batches are filled and taken in order, batch b only into slot b % slots: a slot still held
    // by the consumer would never become free while the consumer waits here.
    CUMNIST_CHECK(m_state[slot] != SlotState::Taken, "BatchLoader::next(): slot {} still holds batch {}; release() it first",
                  slot, m_slot_batch[slot]);
    // Batches staged before a loader error are still handed out; the error comes in place of the
    // batch that failed.
    m_changed.wait(lock, [&] { return m_error || m_state[slot] == SlotState::Full; });
    if (m_state[slot] != SlotState::Full) std::rethrow_exception(m_error);
    CUMNIST_CHECK(m_slot_batch[slot] == b, "BatchLoader: slot {} holds batch {}, expected {}", slot, m_slot_batch[slot], b);
    m_state[slot] = SlotState::Taken;
    ++m_take;
    const std::size_t row0 = static_cast<std::size_t>(slot) * static_cast<std::size_t>(m_batch);
    Batch batch;
    batch.index = b;
    batch.slot = slot;
    batch.rows = std::min(m_batch, m_data.n - b * m_batch);
    batch.images = m_images + row0 * static_cast<std::size_t>(m_features);
    batch.labels = m_labels + row0;
    batch.epoch = m_epoch;
    return batch;
}

void BatchLoader::release(const Batch& batch) {
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        // A batch taken before the latest start() or stop() no longer owns its slot: nothing to do.
        if (batch.epoch != m_epoch || batch.slot < 0 || batch.slot >= m_slots ||
            m_state[batch.slot] != SlotState::Taken || m_slot_batch[batch.slot] != batch.index)
            return;
        m_state[batch.slot] = SlotState::Free;
    }
    m_changed.notify_all();
}

void BatchLoader::gather(int b, int slot) {
    const std::size_t features = static_cast<std::size_t>(m_features);
    const std::size_t first = static_cast<std::size_t>(b) * static_cast<std::size_t>(m_batch);
    const int rows = std::min(m_batch, m_data.n - b * m_batch);
    uint8_t* images = m_images + static_cast<std::size_t>(slot) * m_batch * features;
    uint8_t* labels = m_labels + static_cast<std::size_t>(slot) * m_batch;
    for (int r = 0; r < rows; ++r) {
        const int32_t sample = m_order[first + r];
        CUMNIST_CHECK(sample >= 0 && sample < m_data.n,
                      "BatchLoader: entry {} of the epoch order is {}, outside the {} samples of {}", first + r, sample,
                      m_data.n, m_data.name);
        std::memcpy(images + r * features, m_data.images.data() + static_cast<std::size_t>(sample) * features, features);
        labels[r] = m_data.labels[static_cast<std::size_t>(sample)];
    }
}

void BatchLoader::run() noexcept {
    std::unique_lock<std::mutex> lock(m_mutex);
    for (;;) {
        m_changed.wait(lock, [&] {
            return m_shutdown || (m_active && !m_cancel && !m_error && m_fill < m_last &&
                                  m_state[m_fill % m_slots] == SlotState::Free);
        });
        if (m_shutdown) return;
        const int b = m_fill, slot = b % m_slots;
        m_state[slot] = SlotState::Filling;
        m_busy = true;
        lock.unlock();
        // Outside the lock: the fence may wait for a device copy, and the gather touches only this
        // slot, which no one else uses while it is Filling.
        std::exception_ptr error;
        try {
            if (m_fence) m_fence(slot);
            gather(b, slot);
        } catch (...) {
            error = std::current_exception();
        }
        lock.lock();
        m_busy = false;
        if (error && !m_cancel) {
            m_error = error;
            m_state[slot] = SlotState::Free;
        } else if (m_cancel || error) {
            m_state[slot] = SlotState::Free;  // start()/stop() reset the epoch anyway
        } else {
            m_state[slot] = SlotState::Full;
            m_slot_batch[slot] = b;
            ++m_fill;
        }
        m_changed.notify_all();
    }
}

}  // namespace cumnist
