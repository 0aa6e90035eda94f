/// \file
/// Pool stage 3, wire layout: the shared control blocks and the headers of task and result
/// messages. Before: async_result.hpp; next: worker.hpp, the worker that reads them.
#pragma once

#include <atomic>
#include <cstdint>

namespace mproc {

namespace detail {

// ------------------------------------------------------------------ wire layout

struct alignas(64) pool_shared {
  std::atomic<std::uint32_t> parent_waiting;  // the service thread is about to sleep
};

struct alignas(64) worker_ctl {
  std::atomic<std::uint64_t> cur_job;
  std::atomic<std::uint64_t> cur_item;
  std::atomic<std::int64_t> cur_started_ns;  // 0 while between items
  std::atomic<std::uint32_t> initialized;
  // The last chunk the worker finished: its job and its time per item, by which map's
  // default chunking sizes chunks. Measured here: the parent's own delays (a loaded
  // machine) must not count as the items' cost, or chunks would shrink and workers wait
  // on the parent ever more.
  std::atomic<std::uint64_t> last_chunk_job;
  std::atomic<std::int64_t> last_chunk_item_ns;
  // Written by the worker after each item, read by the parent only once the worker is
  // gone: results it had written but not yet published (they are published in
  // batches) are recovered from these, so the parent knows exactly which item was
  // running. Plain stores to a line the parent does not read while the worker lives.
  std::atomic<std::uint32_t> open_len;           // bytes in the open packed record (0: none)
  std::atomic<std::uint64_t> results_committed;  // result ring position after the last record
  std::atomic<std::uint64_t> open_at;            // ring position of the open packed record
  std::atomic<std::uint64_t> chunk_job;          // the chunk last received: its job...
  std::atomic<std::uint64_t> chunk_first;        // ...and first item
};

enum class task_kind : std::uint32_t { chunk = 0, stop = 1 };
enum class result_status : std::uint32_t { ok = 0, error = 1, packed = 2 };

struct task_header {
  std::uint32_t kind;
  std::uint32_t count;
  std::uint64_t job;
  std::uint64_t first;
  std::int64_t invoker;  // code address of invoke_chunk<...>, see callable.hpp
  std::uint32_t callable_len;
  std::uint32_t item_size;  // packed items: the size of each; 0: length-prefixed items
};
struct result_header {
  std::uint64_t job;
  std::uint64_t index;   // the first item's index for packed results
  std::uint32_t status;
  std::uint32_t count;   // packed: how many values follow, back to back
};

}  // namespace detail

}  // namespace mproc
