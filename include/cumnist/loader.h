// BatchLoader: the host side of the streaming data path (DataPlacement::Stream), for data sets that
// do not fit in device memory. A loader thread gathers the batches of an epoch, in order, from the
// host Dataset and the epoch's sample order into a few staging slots ahead of their use: batch b
// into slot b % slots, as uint8 pixels and labels, rows contiguous. With Device::Cuda the slots are
// page-locked, so the trainer can copy them to the device asynchronously.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cumnist/data.h"
#include "cumnist/device.h"

namespace cumnist {

class BatchLoader {
public:
    // Called on the loader thread before it writes into a slot (with the slot's index): returns once
    // nothing reads the slot's memory any more. The CUDA trainer waits there for the asynchronous
    // copy out of the slot; an exception it throws reaches the consumer through next().
    using SlotFence = std::function<void(int slot)>;

    // One staged batch. The memory stays valid and unchanged until release().
    struct Batch {
        int index = 0;  // batch number in the epoch
        int slot = 0;   // index % slots()
        int rows = 0;   // the batch size, or fewer for the last batch of an epoch
        const uint8_t* images = nullptr;  // rows × features, row-major
        const uint8_t* labels = nullptr;  // rows
        uint64_t epoch = 0;  // which start() it belongs to (release() ignores older ones)
    };

    // `data` is read by the loader thread and must outlive the loader. Allocates `slots` slots of
    // `batch` rows (pinned when device == Cuda) and starts the (idle) thread; nothing is allocated
    // after construction.
    BatchLoader(const Dataset& data, int batch, int slots, Device device, SlotFence fence = {});
    // Cancels the epoch in flight and joins the thread (after the slot it is filling, if any).
    ~BatchLoader();
    BatchLoader(const BatchLoader&) = delete;
    BatchLoader& operator=(const BatchLoader&) = delete;

    // Starts loading batches [first, last) of the epoch whose sample order is `order` (data.n
    // entries; batch b holds samples order[b·batch], ... up to the end of the data set). Batches of
    // an earlier start() not yet taken are dropped, and a previous loader error is cleared.
    void start(const std::vector<int32_t>& order, int first, int last);
    // start() again with the order of the last start() (the identity before the first one).
    void restart(int first, int last);
    // The next batch of the epoch, waiting until it is staged. An exception of the loader thread (a
    // bad sample index, a failed fence) is rethrown in place of the batch it was loading. Throws
    // when every batch has been taken, and when the slot is still held by an earlier batch not yet
    // released (waiting would never end).
    Batch next();
    // The consumer is done with the batch's slot; the loader may refill it (after the fence). A
    // batch taken before the latest start() or stop() is ignored.
    void release(const Batch& batch);
    // Cancels the epoch: no more batches are loaded. Returns once the thread is idle.
    void stop();

    int slots() const { return m_slots; }
    int batch() const { return m_batch; }
    int features() const { return m_features; }

private:
    enum class SlotState : uint8_t { Free, Filling, Full, Taken };
    struct PinnedDeleter {
        Device device;
        void operator()(uint8_t* p) const noexcept;
    };

    void run() noexcept;             // the loader thread
    void gather(int b, int slot);    // batch b into slot; throws on a bad sample index
    void cancel_and_wait(std::unique_lock<std::mutex>& lock);
    void begin(const std::vector<int32_t>* order, int first, int last);  // start(); null: keep the order

    const Dataset& m_data;
    const int m_batch, m_slots, m_features;
    const SlotFence m_fence;
    // slots × batch × features pixels, then slots × batch labels.
    std::unique_ptr<uint8_t[], PinnedDeleter> m_memory;
    uint8_t* m_images = nullptr;
    uint8_t* m_labels = nullptr;

    std::mutex m_mutex;
    std::condition_variable m_changed;  // every state change below notifies all waiters
    std::vector<int32_t> m_order;       // the epoch's order, sized once
    std::vector<SlotState> m_state;
    std::vector<int> m_slot_batch;      // the batch a Full or Taken slot holds
    int m_fill = 0, m_take = 0, m_last = 0;  // next batch to load, next to hand out, end of the epoch
    uint64_t m_epoch = 0;    // start() and stop() calls so far
    bool m_active = false;   // an epoch is being loaded
    bool m_busy = false;     // the thread is filling a slot outside the lock
    bool m_cancel = false;   // start()/stop() wait for the thread to go idle
    bool m_shutdown = false;
    std::exception_ptr m_error;
    std::thread m_thread;    // last: started once everything above exists
};

}  // namespace cumnist
