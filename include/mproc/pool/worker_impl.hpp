/// \file
/// The bodies of worker.hpp: included by it in the header-only mode, compiled once by
/// src/mproc.cpp otherwise (see MPROC_FUNC).
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "worker.hpp"

namespace mproc::detail {

MPROC_FUNC void worker_context::emit_error(std::uint64_t job, std::uint64_t index, std::exception_ptr e) {
  close_packed();  // results keep their order in the ring
  encoded_exception ex = capture_exception(std::move(e));
  std::size_t n = encoded_size(ex);
  emit(job, index, result_status::error, n, [&](std::byte* p) { encode_to(ex, p); });
}

MPROC_FUNC std::atomic<unsigned>& pool_worker_counter() {
  static std::atomic<unsigned> c{0};
  return c;
}

MPROC_FUNC int worker_main(spsc_ring tasks, spsc_ring results, worker_ctl* ctl, pool_shared* shared,
                           int wake_fd, const portable_call& initializer, std::size_t max_tasks,
                           bool timed, std::string name) {
  process_name_storage() = std::move(name);
  pool_worker_signals();  // Ctrl-C reaches the whole process group; the parent decides
  if (initializer) initializer();
  ctl->initialized.store(1, std::memory_order_release);
  worker_context ctx(results, ctl, shared, wake_fd, timed);
  std::vector<std::byte> scratch;
  std::size_t done = 0;
  while (true) {
    spsc_ring::record rec;
    std::span<const std::byte> msg = tasks.read_wait(scratch, rec, [&] { ctx.notify_parent(); });
    reader r{msg.data(), msg.data() + msg.size()};
    task_header h;
    r.get(&h, sizeof h, "task header");
    if (h.kind == static_cast<std::uint32_t>(task_kind::stop)) break;
    r.need(h.callable_len, "task callable");
    ctl->chunk_job.store(h.job, std::memory_order_relaxed);
    ctl->chunk_first.store(h.first, std::memory_order_relaxed);
    task_view t{h.job, h.first, h.count, reader{r.p, r.p + h.callable_len},
                reader{r.p + h.callable_len, r.end}};
    auto inv = reinterpret_cast<invoker_fn>(decode_code_address(h.invoker));
    const std::int64_t chunk_start = monotonic_ns();
    if (inv)
      inv(ctx, t);
    else
      fail_chunk(ctx, t, std::make_exception_ptr(serialization_error(
                             "pool worker: the task names no function of this program image")));
    ctl->last_chunk_job.store(h.job, std::memory_order_relaxed);
    ctl->last_chunk_item_ns.store(std::max<std::int64_t>(1, (monotonic_ns() - chunk_start) / std::max(1u, h.count)),
                                  std::memory_order_release);
    if (rec.data) {
      tasks.release(rec);
      tasks.publish_release();
    }
    ctx.flush();
    if (max_tasks && ++done >= max_tasks) break;
  }
  return 0;
}

MPROC_FUNC int pool_worker_entry(std::span<const std::byte> payload, std::span<const int> fds) {
  reader r{payload.data(), payload.data() + payload.size()};
  std::uint64_t capacity = 0, region_bytes = 0, shared_bytes = 0, max_tasks = 0;
  std::uint8_t timed = 0;
  std::string name;
  decode(r, capacity);
  decode(r, region_bytes);
  decode(r, shared_bytes);
  decode(r, max_tasks);
  decode(r, timed);
  decode(r, name);
  portable_call init = portable_call::decode_from(r);
  std::int32_t tracker_pid = -1;
  decode(r, tracker_pid);
  if (fds.size() != (tracker_pid > 0 ? 4u : 3u))
    throw start_method_error("pool worker: unexpected number of descriptors");
  // Segments a task creates are tracked with the program's, as in a forked worker.
  if (tracker_pid > 0) resource_tracker::instance().adopt_fd(fds[3], tracker_pid);
  shm_region region = shm_region::map(unique_fd(fds[0]), region_bytes);
  shm_region shared = shm_region::map(unique_fd(fds[1]), shared_bytes);
  const int wake_fd = fds[2];  // kept open for the life of the worker
  auto* base = static_cast<std::byte*>(region.data());
  const std::size_t ring_bytes = spsc_ring::bytes_needed(capacity);
  auto* ctl = reinterpret_cast<worker_ctl*>(base);
  spsc_ring tasks = spsc_ring::attach(base + sizeof(worker_ctl));
  spsc_ring results = spsc_ring::attach(base + sizeof(worker_ctl) + ring_bytes);
  return worker_main(tasks, results, ctl, shared.as<pool_shared>(), wake_fd, init, max_tasks,
                     timed != 0, std::move(name));
}

}  // namespace mproc::detail
