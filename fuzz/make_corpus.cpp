// Writes the seed corpora under <corpus root>/<fuzzer>/seed_*: valid inputs of each
// fuzzer's format, so fuzzing starts from the real protocol rather than from nothing.
//   deserialize: one file per fuzzed type holding a valid encoding of its sample value
//                (selector byte + payload), plus the same as a message
//   connection:  streams of frames as Connection::send writes them
//   queue:       ring and overflow records as Queue::put writes them (single,
//                fragmented, aborted, padding)
//   manager:     client sessions: create each kind of object, then use it
// Usage: make_corpus <corpus root>   (fuzz/corpus)
#include "fuzz_manager.hpp"
#include "fuzz_types.hpp"

#include <mproc/managers.hpp>
#include <mproc/connection.hpp>
#include <mproc/detail/mpmc_ring.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

void write_file(const std::string& path, std::uint8_t selector,
                const std::vector<std::byte>& payload) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.put(static_cast<char>(selector));
  out.write(reinterpret_cast<const char*>(payload.data()),
            static_cast<std::streamsize>(payload.size()));
  if (!out) {
    std::fprintf(stderr, "make_corpus: cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "make_corpus: cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

template <class T>
std::string message(const T& v) {
  std::string m(mproc::detail::message_size(v), '\0');
  mproc::detail::write_message(v, reinterpret_cast<std::byte*>(m.data()));
  return m;
}

template <class T>
std::string pod(const T& v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof v);
}

// ---- connection: opts byte, cut byte, then u64 length + body frames
std::string frame(const std::string& body) { return pod(std::uint64_t(body.size())) + body; }

void connection_seeds(const std::string& dir) {
  const std::vector<std::string> words{"alpha", "", std::string(300, 'x')};
  const std::string stream = frame(message(std::string("hello"))) + frame(message(words)) +
                             frame(std::string(2000, 'b')) + frame("");
  // opts: low bits pick the size limit (5: 1 GiB, 3: 100 bytes), 0x80 typed, 0x40 string
  write_raw(dir + "/seed_bytes", std::string("\x05\x80") + stream);
  write_raw(dir + "/seed_bytes_limit", std::string("\x03\x30") + stream);
  write_raw(dir + "/seed_string", std::string("\xc5\x40") + frame(message(std::string("hi"))) +
                                      frame(message(words)));
  write_raw(dir + "/seed_words", std::string("\x85\xa0") + frame(message(words)) +
                                     frame(message(std::string("not words"))));
  // control frames of the shared-memory lane, between ordinary ones (no descriptor can
  // come with them here: the attach is ignored, the ring message refused)
  namespace d = mproc::detail;
  const std::string control = pod(d::ring_attach_frame) + pod(std::uint64_t(7)) +
                              pod(std::uint64_t(d::ring_capacity)) + pod(std::uint64_t(0)) +
                              frame("between") + pod(d::ring_message_frame) + pod(std::uint64_t(7)) +
                              pod(std::uint64_t(0)) + pod(std::uint64_t(100)) + frame("after") +
                              pod(d::control_frame_bit | 9) + pod(std::uint64_t(1)) + pod(std::uint64_t(2));
  write_raw(dir + "/seed_control", std::string("\x05\x60") + control);
  write_raw(dir + "/seed_control_typed", std::string("\xc5\x90") + control);
}

// ---- queue: type byte, start byte, split byte, then records
std::string record(std::uint32_t kind, const std::string& payload) {
  std::string r = pod(std::uint32_t(payload.size())) + pod(kind) + payload;
  r.resize((r.size() + 7) & ~std::size_t(7), '\0');
  return r;
}

void queue_seeds(const std::string& dir) {
  using ring = mproc::detail::mpmc_ring;
  const std::string s = message(std::string("a queued string"));
  const std::string big = message(std::string(100, 'q'));
  // a fragmented message: first carries the total length, then middle and last
  const std::string frags = record(ring::k_first, pod(std::uint64_t(big.size())) + big.substr(0, 40)) +
                            record(ring::k_middle, big.substr(40, 40)) +
                            record(ring::k_last, big.substr(80));
  const std::string aborted = record(ring::k_first, pod(std::uint64_t(big.size())) + big.substr(0, 40)) +
                              record(ring::k_abort, "");
  std::string all = record(ring::k_single, s) + frags + aborted + record(ring::k_single, s);
  write_raw(dir + "/seed_string_ring", std::string("\x00\x00\xff") + all);
  write_raw(dir + "/seed_string_wrap", std::string("\x00\xf0\xff") + all);
  // ring records, then overflow records (padding, then a message)
  std::string over = record(ring::k_pad, std::string(8, '\0')) + record(ring::k_single, s);
  std::string both = record(ring::k_single, s) + over;
  std::uint8_t split = static_cast<std::uint8_t>(255 * record(ring::k_single, s).size() / both.size());
  write_raw(dir + "/seed_string_overflow", std::string("\x00\x10") + char(split) + both);
  const std::vector<int> ints{1, 2, 3, 4, 5};
  const std::string vi = message(ints);
  const std::string vi_frags = record(ring::k_first, pod(std::uint64_t(vi.size())) + vi.substr(0, 16)) +
                               record(ring::k_last, vi.substr(16));
  write_raw(dir + "/seed_ints", std::string("\x01\x08\xff") + record(ring::k_single, vi) + vi_frags);
  const std::vector<std::string> words{"x", "yz"};
  write_raw(dir + "/seed_words", std::string("\x02\x20\xff") + record(ring::k_single, message(words)));
  const std::vector<double> ds{1.5, -2.0};
  write_raw(dir + "/seed_doubles", std::string("\x03\x40\xff") + record(ring::k_single, message(ds)));
}

// ---- manager: sessions of request frames
void manager_seeds(const std::string& dir) {
  namespace mgr = mproc::detail::mgr;
  using mgr::op;
  auto req = [](op o, std::uint64_t id = 0, std::string a = {}, std::string b = {}, std::int64_t n = 0,
                std::int64_t m = -1, std::vector<std::string> list = {}) {
    mgr::request q;
    q.o = o, q.id = id, q.a = std::move(a), q.b = std::move(b), q.n = n, q.m = m, q.list = std::move(list);
    return q.encode();
  };
  auto session = [&](const std::string& name, std::uint8_t first, const std::vector<std::string>& reqs) {
    std::string in;
    for (auto& r : reqs) fuzz::manager::append_frame(in, r);
    in[0] = static_cast<char>((in[0] & ~1) | first);  // bit 0 of byte 0: Unix socket
    write_raw(dir + "/seed_" + name, in);
  };
  const std::string k = message(std::string("key")), v = message(42);
  const std::string tags(16, '\0');
  // object kinds: dict 1, list 2, ns 3, queue 4, lock 5, value 6; ids count from 1
  session("dict", 0, {req(op::create, 0, "d", tags, 1), req(op::dict_set, 1, k, v), req(op::dict_get, 1, k),
                      req(op::dict_contains, 1, k), req(op::dict_items, 1), req(op::dict_size, 1),
                      req(op::dict_update, 1, k, v, 7), req(op::dict_pop, 1, k), req(op::dict_erase, 1, k),
                      req(op::dict_clear, 1), req(op::destroy, 1)});
  session("list", 0, {req(op::create, 0, "", tags, 2), req(op::list_append, 1, "", v),
                      req(op::list_extend, 1, "", "", 0, -1, {v, v}), req(op::list_get, 1, "", "", -1),
                      req(op::list_set, 1, "", v, 0), req(op::list_items, 1), req(op::list_size, 1),
                      req(op::list_pop, 1, "", "", 0), req(op::list_clear, 1)});
  session("queue", 0, {req(op::create, 0, "", tags, 4, 2), req(op::queue_put, 1, "", v, 0, -1),
                       req(op::queue_put, 1, "", v, 1, 0), req(op::queue_put, 1, "", v, 1, 0),
                       req(op::queue_size, 1), req(op::queue_get, 1, "", "", 0, -1),
                       req(op::queue_get, 1, "", "", 1, 0), req(op::queue_get, 1, "", "", 1, 0)});
  session("lock_value", 1, {req(op::create, 0, "", tags, 5), req(op::lock_acquire, 1, "", "", 0, -1),
                            req(op::lock_acquire, 1, "", "", 1, 0), req(op::lock_release, 1),
                            req(op::create, 0, "v", tags, 6, -1, {v}), req(op::value_get, 2),
                            req(op::value_set, 2, "", v), req(op::attach), req(op::hello)});
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus root>\n", argv[0]);
    return 2;
  }
  const std::string root = argv[1];
  for (const char* name : {"connection", "queue", "manager", "deserialize"})
    std::filesystem::create_directories(root + "/" + name);
  connection_seeds(root + "/connection");
  queue_seeds(root + "/queue");
  manager_seeds(root + "/manager");
  const std::string dir = root + "/deserialize";
  auto samples = fuzz::samples();
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (write_file(dir + "/seed_" + std::to_string(I), std::uint8_t(I),
                mproc::serialize(std::get<I>(samples))),
     ...);
    // the message path takes the payload without its tag (the fuzzer adds the tag)
    (write_file(dir + "/seed_msg_" + std::to_string(I), std::uint8_t(I | fuzz::message_bit),
                mproc::serialize(std::get<I>(samples))),
     ...);
  }(std::make_index_sequence<fuzz::type_count>{});
  return 0;
}
