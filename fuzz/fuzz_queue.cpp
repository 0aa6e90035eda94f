// libFuzzer target: the Queue record reader (detail::mpmc_ring::get, the code behind
// Queue::get) over records written by a corrupt or hostile producer.
//
// The fuzzer plays that producer: it maps the queue's shared memory itself, writes the
// input's bytes as the published part of the ring (and of the overflow area) and
// moves the counters as a producer would; then a freshly attached consumer takes
// messages until none is left. Every outcome must be a value, serialization_error or
// "nothing there": no crash, no hang, no unbounded allocation.
//
// Input: byte 0 picks the message type (bits 0-1), how many ring lengths the forged
// tail is beyond the records (bits 4-6: a producer claiming more than the ring holds)
// and whether the queue is closed (bit 7); byte 1 where in the ring the records start
// (so many wrap around its end), byte 2 how the rest splits between ring and overflow
// area; then the bytes.
//
// A corrupt record must not be reported for ever: every serialization_error has to
// move the consumer past something (the ring's or the overflow area's head advances).
#include <mproc/detail/mpmc_ring.hpp>
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace {

using mproc::detail::mpmc_ring;

constexpr std::size_t ring_bytes = mpmc_ring::min_capacity;
constexpr std::size_t overflow_bytes = 64 * 1024;

struct shared_queue {
  std::shared_ptr<mpmc_ring> ring = mpmc_ring::create(ring_bytes, 0, false, overflow_bytes);
  std::size_t file_bytes = mpmc_ring::header_bytes + ring_bytes + overflow_bytes;
  std::byte* mem = map();

  std::byte* map() const {
    void* p = ::mmap(nullptr, file_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, ring->fd(), 0);
    if (p == MAP_FAILED) std::abort();
    return static_cast<std::byte*>(p);
  }
  mproc::detail::mpmc_ring_header& header() const {
    return *reinterpret_cast<mproc::detail::mpmc_ring_header*>(mem);
  }
  std::byte* ring_at(std::uint64_t pos) const {
    return mem + mpmc_ring::header_bytes + std::size_t(pos % ring_bytes);
  }
  std::byte* overflow_at(std::uint64_t pos) const {
    return mem + mpmc_ring::header_bytes + ring_bytes + std::size_t(pos % overflow_bytes);
  }
};

constexpr std::uint64_t align8(std::uint64_t n) { return (n + 7) & ~std::uint64_t(7); }

template <class T>
void consume(mpmc_ring& r, const mproc::detail::mpmc_ring_header& h) {
  for (int i = 0; i < 256; ++i) {
    std::optional<T> out;
    const std::uint64_t head = h.head.load(), o_head = h.o_head.load();
    try {
      if (r.get(out, mproc::detail::deadline_now()) != mpmc_ring::status::ok) return;
      if (!out) std::abort();  // "ok" with nothing taken
    } catch (const mproc::serialization_error&) {
      // Corrupt record reported; the consumer goes on with what follows, so the
      // error must have consumed something.
      if (h.head.load() == head && h.o_head.load() == o_head) std::abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static shared_queue q;
  if (size < 3) return 0;
  const std::uint8_t which = data[0];
  const std::size_t body = size - 3;
  const std::size_t in_ring = std::min<std::size_t>(body * data[2] / 255, ring_bytes);
  const auto* bytes = reinterpret_cast<const std::byte*>(data + 3);

  // Start near the end of the ring, several laps in, as after a long run.
  auto& h = q.header();
  const std::uint64_t head = 3 * ring_bytes + ring_bytes - 1024 + std::uint64_t(data[1]) * 8;
  std::memset(q.ring_at(0), 0, ring_bytes);
  for (std::size_t i = 0; i < in_ring; ++i) *q.ring_at(head + i) = bytes[i];
  const std::size_t in_over = body - in_ring;
  std::memset(q.overflow_at(0), 0, overflow_bytes);
  std::memcpy(q.overflow_at(0), bytes + in_ring, in_over);

  h.closed.store(which & 0x80 ? 1 : 0);
  h.in_message.store(0);
  h.head.store(head);
  const std::uint64_t forged_laps = (which >> 4) & 7;
  h.tail.store(head + align8(in_ring) + forged_laps * ring_bytes);
  h.o_head.store(0);
  h.o_punched.store(0);
  h.o_tail.store(align8(in_over));
  h.put_count.store(1000);
  h.get_count.store(0);

  // A consumer process attaching now: no state left from earlier inputs.
  auto r = mpmc_ring::attach(mproc::detail::unique_fd(::fcntl(q.ring->fd(), F_DUPFD_CLOEXEC, 0)));
  switch (which % 4) {
    case 0: consume<std::string>(*r, h); break;
    case 1: consume<std::vector<int>>(*r, h); break;
    case 2: consume<std::vector<std::string>>(*r, h); break;
    default: consume<std::vector<double>>(*r, h); break;
  }
  return 0;
}
