// Manager and its proxies: every operation, use across processes (forked, exec'd,
// remote over TCP), atomic update, authentication, hostile peers, a vanished server,
// and no leaks.
#include <catch2/catch.hpp>

#include "spawn_entry.hpp"

#include <mproc/managers.hpp>
// The server and its store, driven directly by the tests below (in the compiled mode
// the public headers leave them to libmproc).
#include <mproc/detail/manager_server.hpp>
#include <mproc/detail/manager_store.hpp>
#include <mproc/pool.hpp>
#include <mproc/process.hpp>

#include <atomic>
#include <cstdlib>
#include <chrono>
#include <filesystem>
#include <optional>
#include <future>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MPROC_TEST_HELPER_DIR
#define MPROC_TEST_HELPER_DIR "tests/helpers"
#endif

using namespace std::chrono_literals;
namespace mgr = mproc::detail::mgr;

namespace {

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

std::size_t live_children() {
  std::ifstream in("/proc/self/task/" + std::to_string(::getpid()) + "/children");
  std::size_t n = 0;
  std::string pid;
  while (in >> pid) ++n;
  return n;
}

/// Runs a started child to completion within `limit`; kills it otherwise.
int finish(mproc::Process& p, std::chrono::seconds limit = 30s) {
  if (!p.join(limit)) {
    p.kill();
    p.join();
    return -1000;
  }
  return p.exitcode().value_or(-999);
}

/// exec()s a helper program and returns its exit code (-1000 if it had to be killed).
int run_helper(std::vector<std::string> args, std::chrono::seconds limit = 30s) {
  std::string path = std::string(MPROC_TEST_HELPER_DIR) + "/manager_client";
  args.insert(args.begin(), path);
  pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(path.c_str(), argv.data());
    ::_exit(127);
  }
  auto fd = mproc::detail::pidfd_open(pid);
  pollfd p{fd.get(), POLLIN, 0};
  int rc = ::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(limit).count()));
  if (rc != 1) ::kill(pid, SIGKILL);
  int st = 0;
  ::waitpid(pid, &st, 0);
  return rc == 1 ? mproc::detail::exitcode_from_status(st) : -1000;
}

int add_ten(int v) { return v + 10; }

void expect(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(what);  // exit code 1 from a Process child
}

}  // namespace

namespace manager_errors {
struct over_quota : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct unregistered_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
int throw_over_quota(int) { throw over_quota("quota of 5 exceeded"); }
int throw_unregistered(int) { throw unregistered_failure("nobody registered me"); }
}  // namespace manager_errors
MPROC_REGISTER_EXCEPTION(manager_errors::over_quota);

TEST_CASE("DictProxy operations", "[managers]") {
  mproc::Manager m;
  auto d = m.dict<std::string, int>();
  CHECK(d.size() == 0);
  CHECK(d.empty());
  d.set("b", 2);
  d.set("a", 1);
  d.set("c", 3);
  d.set("b", 20);  // overwrite keeps the first insertion position
  CHECK(d.get("b") == 20);
  CHECK(d.get("zz", -1) == -1);
  CHECK_THROWS_AS(d.get("zz"), mproc::key_error);
  CHECK(d.try_get("a") == std::optional<int>(1));
  CHECK_FALSE(d.try_get("zz").has_value());
  CHECK(d.contains("a"));
  CHECK_FALSE(d.contains("zz"));
  CHECK(d.size() == 3);
  CHECK(d.items() == std::vector<std::pair<std::string, int>>{{"b", 20}, {"a", 1}, {"c", 3}});
  CHECK(d.keys() == std::vector<std::string>{"b", "a", "c"});
  CHECK(d.values() == std::vector<int>{20, 1, 3});
  CHECK(d.to_map() == std::map<std::string, int>{{"a", 1}, {"b", 20}, {"c", 3}});
  CHECK(d.erase("a"));
  CHECK_FALSE(d.erase("a"));
  CHECK(d.pop("c") == 3);
  CHECK_THROWS_AS(d.pop("c"), mproc::key_error);
  CHECK(d.update("n", [](int v) { return v + 5; }, 10) == 15);
  CHECK(d.update("n", [](int v) { return v * 2; }, 10) == 30);
  int calls = 0;  // locally any callable works, stateful ones included
  CHECK(d.update("n", [&calls](int v) { ++calls; return v - 1; }, 0) == 29);
  CHECK(calls == 1);
  // A throwing update leaves the value untouched.
  CHECK_THROWS_AS(d.update("n", [](int) -> int { throw std::logic_error("no"); }, 0), std::logic_error);
  CHECK(d.get("n") == 29);
  d.clear();
  CHECK(d.size() == 0);

  // Copies are the same dict; structured values work.
  auto d2 = m.dict<int, std::map<std::string, int>>();
  auto copy = d2;
  copy.set(7, {{"words", 9}, {"chars", 43}});
  CHECK(d2.get(7).at("chars") == 43);
  CHECK(copy.id() == d2.id());
  CHECK(m.dict<int, int>().id() != d2.id());
}

TEST_CASE("update() must not call the manager from inside the function", "[managers]") {
  mproc::Manager m;
  auto d = m.dict<std::string, int>();
  CHECK_THROWS_AS(d.update("k", [&d](int v) { return v + d.get("k", 0); }, 0), std::system_error);
  d.set("k", 1);  // the manager is still usable afterwards
  CHECK(d.get("k") == 1);
}

TEST_CASE("ListProxy operations", "[managers]") {
  mproc::Manager m;
  auto l = m.list<int>();
  CHECK(l.size() == 0);
  l.append(3);
  l.append(4);
  l.extend(std::vector<int>{5, 6, 7});
  CHECK(l.size() == 5);
  CHECK(l.get(0) == 3);
  CHECK(l.get(-1) == 7);
  l.set(0, 30);
  l.set(-2, 60);
  CHECK(l.items() == std::vector<int>{30, 4, 5, 60, 7});
  CHECK_THROWS_AS(l.get(5), mproc::index_error);
  CHECK_THROWS_AS(l.get(-6), mproc::index_error);
  CHECK_THROWS_AS(l.set(9, 1), mproc::index_error);
  CHECK(l.pop() == 7);
  CHECK(l.pop(0) == 30);
  CHECK(l.items() == std::vector<int>{4, 5, 60});
  l.clear();
  CHECK(l.empty());
  CHECK_THROWS_AS(l.pop(), mproc::index_error);

  auto s = m.list<std::string>();
  s.append(std::string(100000, 'x'));  // large elements are fine
  CHECK(s.get(0).size() == 100000);
}

TEST_CASE("NamespaceProxy is type-checked", "[managers]") {
  mproc::Manager m;
  auto ns = m.Namespace();
  ns.set("label", "run-1");  // a C string is stored as std::string
  ns.set("count", 3);
  ns.set("ratio", 0.5);
  CHECK(ns.get<std::string>("label") == "run-1");
  CHECK(ns.get<int>("count") == 3);
  CHECK(ns.get<double>("ratio") == 0.5);
  CHECK_THROWS_AS(ns.get<std::string>("count"), mproc::serialization_error);
  try {
    (void)ns.get<long>("label");
  } catch (const mproc::serialization_error& e) {
    CHECK(std::string(e.what()).find("std::") != std::string::npos);  // names the stored type
  }
  CHECK_THROWS_AS(ns.get<int>("missing"), mproc::attribute_error);
  CHECK(ns.has("label"));
  CHECK(ns.names() == std::vector<std::string>{"label", "count", "ratio"});
  ns.set("count", std::string("three"));  // re-binding may change the type, as in Python
  CHECK(ns.get<std::string>("count") == "three");
  CHECK(ns.erase("count"));
  CHECK_FALSE(ns.has("count"));
}

TEST_CASE("QueueProxy, LockProxy and ValueProxy", "[managers]") {
  mproc::Manager m;
  auto q = m.Queue<std::string>();
  q.put("a");
  q.put("b", 1s);
  CHECK(q.qsize() == 2);
  CHECK(q.get() == "a");
  CHECK(q.get(1s) == "b");
  CHECK(q.empty());
  CHECK_THROWS_AS(q.get_nowait(), mproc::queue_empty);
  CHECK_THROWS_AS(q.get(50ms), mproc::queue_empty);
  CHECK_FALSE(q.try_get().has_value());

  auto bounded = m.Queue<int>(1);
  bounded.put_nowait(1);
  CHECK_THROWS_AS(bounded.put_nowait(2), mproc::queue_full);
  CHECK_THROWS_AS(bounded.put(2, 50ms), mproc::queue_full);
  CHECK(bounded.get() == 1);

  auto lk = m.Lock();
  CHECK(lk.acquire());
  CHECK_FALSE(lk.acquire(false));
  CHECK_FALSE(lk.acquire(true, 50ms));
  lk.release();
  CHECK_THROWS_AS(lk.release(), mproc::state_error);
  {
    std::scoped_lock g(lk);
    CHECK_FALSE(lk.try_lock());
  }
  CHECK(lk.try_lock());
  lk.unlock();

  auto v = m.Value<int>(5);
  CHECK(v.get() == 5);
  v.set(6);
  CHECK(v.value() == 6);
  auto named = m.Value<std::string>("cfg", std::string("first"));
  auto again = m.Value<std::string>("cfg", std::string("ignored"));  // exists: not reset
  CHECK(again.get() == "first");
  CHECK(named.id() == again.id());
}

TEST_CASE("destroy() frees an object; its proxies then raise manager_error", "[managers]") {
  mproc::Manager m;
  auto d = m.dict<std::string, std::string>("big");
  for (int i = 0; i < 100; ++i) d.set(std::to_string(i), std::string(1000, 'x'));
  auto copy = d;
  CHECK(m.destroy(d));
  CHECK_FALSE(m.destroy(d));
  CHECK_THROWS_AS(copy.size(), mproc::manager_error);
  CHECK(m.dict<std::string, std::string>("big").size() == 0);  // the name is free again
  // Memory is reused: filling and destroying repeatedly does not exhaust a small segment.
  mproc::Manager small({.capacity = 1 << 20});
  for (int round = 0; round < 20; ++round) {
    auto l = small.list<std::string>();
    for (int i = 0; i < 8; ++i) l.append(std::string(64 << 10, 'y'));
    CHECK(small.destroy(l));
  }
  // A blocked get on a destroyed queue is woken and told.
  auto q = m.Queue<int>();
  std::thread t([&] { std::this_thread::sleep_for(100ms); m.destroy(q); });
  CHECK_THROWS_AS(q.get(10s), mproc::manager_error);
  t.join();
}

TEST_CASE("named objects: same object by name, kind and types checked", "[managers]") {
  mproc::Manager m;
  auto a = m.dict<std::string, int>("scores");
  a.set("x", 1);
  auto b = m.dict<std::string, int>("scores");
  CHECK(b.get("x") == 1);
  CHECK(a.id() == b.id());
  CHECK_THROWS_AS((m.dict<std::string, double>("scores")), mproc::serialization_error);
  CHECK_THROWS_AS(m.list<int>("scores"), mproc::manager_error);
  CHECK(m.list<int>("other").size() == 0);
}

TEST_CASE("proxies work in forked Process children", "[managers][process]") {
  mproc::Manager m;
  auto d = m.dict<std::string, int>();
  auto l = m.list<int>();
  auto q = m.Queue<int>();
  auto reply = m.Queue<int>();
  auto ns = m.Namespace();
  auto lk = m.Lock();
  auto v = m.Value<int>(0);
  lk.acquire();
  mproc::Process p(
      [](mproc::DictProxy<std::string, int> d, mproc::ListProxy<int> l, mproc::QueueProxy<int> q,
         mproc::QueueProxy<int> reply, mproc::NamespaceProxy ns, mproc::LockProxy lk, mproc::ValueProxy<int> v) {
        d.set("child", ::getpid());
        l.append(1);
        l.append(2);
        ns.set("who", std::string("child"));
        v.set(99);
        q.put(41);
        expect(reply.get(10s) == 42, "parent's reply");
        expect(lk.acquire(true, 10s), "lock released by the parent");
        lk.release();
      },
      d, l, q, reply, ns, lk, v);
  p.start();
  CHECK(q.get(10s) == 41);
  CHECK(d.get("child") == p.pid());
  CHECK(l.items() == std::vector<int>{1, 2});
  CHECK(ns.get<std::string>("who") == "child");
  CHECK(v.get() == 99);
  reply.put(42);
  lk.release();
  CHECK(finish(p) == 0);
}

TEST_CASE("update() is atomic: 4 processes x 1000 increments", "[managers][process]") {
  mproc::Manager m;
  auto d = m.dict<std::string, long>();
  std::vector<mproc::Process> ps;
  for (int i = 0; i < 4; ++i)
    ps.emplace_back(
        [](mproc::DictProxy<std::string, long> d) {
          for (int k = 0; k < 1000; ++k) d.update("count", [](long v) { return v + 1; }, 0L);
        },
        d);
  for (auto& p : ps) p.start();
  for (auto& p : ps) CHECK(finish(p) == 0);
  CHECK(d.get("count") == 4000);
}

TEST_CASE("a serialized proxy works in an exec'd process (attaches over the Unix socket)", "[managers]") {
  mproc::Manager m;
  auto d = m.dict<std::string, int>();
  d.set("counter", 5);
  auto bytes = mproc::serialize(d);
  std::string hex = mproc::detail::hex(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  CHECK(run_helper({"proxy", hex}) == 0);
  CHECK(d.get("from_proxy") == 7);
  CHECK(d.get("counter") == 50);
  // And within this process a decoded proxy shares the existing mapping.
  auto back = mproc::deserialize<mproc::DictProxy<std::string, int>>(bytes);
  CHECK(back.get("from_proxy") == 7);
}

TEST_CASE("TCP: a remote client in another process, by name", "[managers][tcp]") {
  std::string key = "s3cret-key";
  mproc::Manager m({.address = "127.0.0.1:0", .authkey = key});
  REQUIRE(m.port() > 0);
  CHECK(m.address() == "127.0.0.1:" + std::to_string(m.port()));
  auto d = m.dict<std::string, int>("shared");
  d.set("counter", 1000);
  std::string hexkey = mproc::detail::hex(key);
  CHECK(run_helper({"tcp", m.address(), hexkey, "shared"}) == 0);
  CHECK(d.get("remote") == 42);
  CHECK(d.get("counter") == 1100);
  CHECK(m.list<std::string>("log").size() == 1);

  // A client in this process too: every operation goes over the socket.
  auto c = mproc::Manager::connect(m.address(), key);
  auto rd = c.dict<std::string, int>("shared");
  CHECK(rd.get("remote") == 42);
  CHECK(rd.update("counter", [](int v) { return v + 1; }, 0) == 1101);
  // Function pointers travel as offsets within this executable (checked by build-id).
  CHECK(rd.update("counter", &add_ten, 0) == 1111);
  CHECK(rd.update("counter", add_ten, 0) == 1121);
  // A function outside the executable (here: in libc) cannot be sent.
  CHECK_THROWS_AS(rd.update("counter", static_cast<int (*)(int)>(&::abs), 0), mproc::manager_error);
  int step = 3;
  CHECK_THROWS_AS(rd.update("counter", [step](int v) { return v + step; }, 0), mproc::manager_error);
  CHECK(d.get("counter") == 1121);
  CHECK_THROWS_AS(rd.get("nope"), mproc::key_error);
  // A server-side error is the operation's, not the connection's: it stays usable.
  CHECK_THROWS_AS((c.dict<std::string, double>("shared")), mproc::serialization_error);
  CHECK(rd.get("remote") == 42);
  auto rq = c.Queue<int>("jobs");
  CHECK_THROWS_AS(rq.get(50ms), mproc::queue_empty);
  m.Queue<int>("jobs").put(9);
  CHECK(rq.get(5s) == 9);
  auto rl = c.list<int>("nums");
  rl.extend(std::vector<int>{1, 2, 3});
  CHECK(m.list<int>("nums").items() == std::vector<int>{1, 2, 3});
  CHECK_THROWS_AS(rl.get(10), mproc::index_error);
  // A remote proxy passed to a forked child opens its own connection there.
  mproc::Process p([](mproc::DictProxy<std::string, int> rd) { rd.set("from_child", 1); }, rd);
  p.start();
  CHECK(finish(p) == 0);
  CHECK(d.get("from_child") == 1);
}

TEST_CASE("wrong authkey raises authentication_error", "[managers][auth]") {
  mproc::Manager m({.address = "127.0.0.1:0", .authkey = "right"});
  CHECK_THROWS_AS(mproc::Manager::connect(m.address(), "wrong"), mproc::authentication_error);
  CHECK_THROWS_AS(mproc::Manager::connect(m.unix_address(), "wrong"), mproc::authentication_error);
  CHECK(run_helper({"badkey", m.address(), mproc::detail::hex("wrong")}) == 0);
  // The server survives bad clients.
  auto ok = mproc::Manager::connect(m.address(), "right");
  CHECK(ok.dict<int, int>("x").size() == 0);
}

TEST_CASE("missing keys, bad indexes and missing attributes raise key_error, index_error and "
          "attribute_error, locally and over TCP", "[managers][errors]") {
  mproc::Manager m({.address = "127.0.0.1:0", .authkey = "k"});
  auto remote = mproc::Manager::connect(m.address(), "k");
  for (mproc::Manager* mm : {&m, &remote}) {
    INFO((mm == &m ? "local" : "over TCP"));
    auto d = mm->dict<std::string, int>();
    CHECK_THROWS_AS(d.get("missing"), mproc::key_error);
    CHECK_THROWS_AS(d.pop("missing"), mproc::key_error);
    CHECK_THROWS_AS(d.popitem(), mproc::key_error);
    CHECK_THROWS_AS(d.get("missing"), mproc::error);
    CHECK_THROWS_AS(d.popitem(), mproc::error);
    CHECK_THROWS_WITH(d.popitem(), Catch::Contains("empty"));

    auto l = mm->list<int>();
    CHECK_THROWS_AS(l.pop(), mproc::index_error);
    CHECK_THROWS_AS(l.pop(), mproc::error);
    l.append(1);
    CHECK_THROWS_AS(l.pop(5), mproc::index_error);
    CHECK_THROWS_AS(l.get(-2), mproc::index_error);
    CHECK_THROWS_AS(l.set(1, 0), mproc::index_error);
    CHECK_THROWS_WITH(l.get(7), Catch::Contains("index 7") && Catch::Contains("size 1"));

    auto a = mm->Array<int>(3);
    CHECK_THROWS_AS(a.get(3), mproc::index_error);
    CHECK_THROWS_AS(a.set(-4, 0), mproc::index_error);
    CHECK_THROWS_AS(a.get(3), mproc::error);

    auto ns = mm->Namespace();
    CHECK_THROWS_AS(ns.get<int>("missing"), mproc::attribute_error);
    CHECK_THROWS_AS(ns.get<int>("missing"), mproc::error);
    CHECK_THROWS_WITH(ns.get<int>("missing"), Catch::Contains("missing"));
    // and catch (const std::exception&) still catches them (one std::exception base)
    try {
      (void)ns.get<int>("missing");
      FAIL("no exception");
    } catch (const std::exception& e) {
      CHECK(dynamic_cast<const mproc::attribute_error*>(&e) != nullptr);
    }
  }
}

TEST_CASE("an update function's exception arrives as the tasks' do: registered types as themselves",
          "[managers][errors][tcp]") {
  mproc::Manager m({.address = "127.0.0.1:0", .authkey = "k"});
  auto remote = mproc::Manager::connect(m.address(), "k");
  for (mproc::Manager* mm : {&m, &remote}) {
    INFO((mm == &m ? "local" : "over TCP"));
    auto d = mm->dict<std::string, int>(mm == &m ? "local" : "remote");
    // A captureless lambda (over TCP: by the id of its type), then a function pointer.
    CHECK_THROWS_AS(d.update("n", [](int) -> int { throw manager_errors::over_quota("lambda over quota"); }, 0),
                    manager_errors::over_quota);
    CHECK_THROWS_WITH(d.update("n", &manager_errors::throw_over_quota, 0), "quota of 5 exceeded");
    CHECK_THROWS_AS(d.update("n", &manager_errors::throw_over_quota, 0), manager_errors::over_quota);
    // The standard and mproc types keep their type, as for tasks.
    CHECK_THROWS_AS(d.update("n", [](int) -> int { throw std::length_error("too long"); }, 0), std::length_error);
    CHECK_THROWS_AS(d.update("n", [](int) -> int { throw mproc::value_error("bad"); }, 0), mproc::value_error);
    CHECK_FALSE(d.contains("n"));  // nothing was stored by a failed update
    CHECK(d.update("n", [](int v) { return v + 1; }, 0) == 1);
  }
  // A type this process did not register: as itself locally, as remote_error from the
  // server (with its type name and the server's pid), as a task's would be.
  auto local = m.dict<std::string, int>("local");
  CHECK_THROWS_AS(local.update("n", &manager_errors::throw_unregistered, 0), manager_errors::unregistered_failure);
  auto rd = remote.dict<std::string, int>("remote");
  try {
    (void)rd.update("n", &manager_errors::throw_unregistered, 0);
    FAIL("no exception");
  } catch (const mproc::remote_error& e) {
    CHECK(e.type_name() == "manager_errors::unregistered_failure");
    CHECK(std::string(e.what()) == "nobody registered me");
    CHECK(e.pid() == m.server_pid());
  }
  CHECK(rd.get("n") == 1);  // the connection stays usable
}

TEST_CASE("a forged or garbled error in a manager response raises serialization_error",
          "[managers][hostile][errors]") {
  using mproc::detail::encoded_exception;
  using mproc::detail::exception_kind;
  auto reply_with = [](encoded_exception e) {
    mgr::response r;
    r.error = std::move(e);
    return r.encode();
  };
  // Fields too short for the kind, and bytes left over after them.
  const auto short_fields =
      reply_with({static_cast<std::uint8_t>(exception_kind::worker_died), "w", "died", {std::byte{1}}});
  CHECK_THROWS_AS(mgr::response::decode(short_fields).raise_if_error(), mproc::serialization_error);
  CHECK_THROWS_WITH(mgr::response::decode(short_fields).raise_if_error(),
                    Catch::StartsWith("corrupt manager response"));
  const auto extra =
      reply_with({static_cast<std::uint8_t>(exception_kind::key_error), "k", "missing", {std::byte{7}}});
  CHECK_THROWS_AS(mgr::response::decode(extra).raise_if_error(), mproc::serialization_error);
  // A kind this build does not know arrives as remote_error, as for tasks.
  const auto unknown = reply_with({200, "future::error", "from a newer server", {}});
  CHECK_THROWS_AS(mgr::response::decode(unknown).raise_if_error(), mproc::remote_error);
  // A well-formed one arrives as its type.
  const auto key = reply_with({static_cast<std::uint8_t>(exception_kind::key_error), "mproc::key_error", "k", {}});
  CHECK_THROWS_AS(mgr::response::decode(key).raise_if_error(), mproc::key_error);
  // Truncated replies and a bad optional flag do not decode at all.
  for (std::size_t cut = 1; cut < key.size(); ++cut)
    CHECK_THROWS_AS(mgr::response::decode(std::string_view(key).substr(0, key.size() - cut)),
                    mproc::serialization_error);
  std::string bad_flag = mgr::response{}.encode();
  bad_flag.back() = '\x02';
  CHECK_THROWS_AS(mgr::response::decode(bad_flag), mproc::serialization_error);
}

TEST_CASE("forged reply fields and segment offsets raise serialization_error, not std errors or UB",
          "[managers][hostile][errors]") {
  mgr::response r;
  r.list = {"12", "x1", "", "18446744073709551616"};
  CHECK(r.number(0, "count") == 12);
  CHECK_THROWS_AS(r.number(1, "count"), mproc::serialization_error);  // not a number
  CHECK_THROWS_AS(r.number(2, "count"), mproc::serialization_error);  // empty
  CHECK_THROWS_AS(r.number(3, "count"), mproc::serialization_error);  // out of range
  CHECK_THROWS_AS(r.field(4, "flag"), mproc::serialization_error);    // missing
  CHECK_THROWS_WITH(r.field(9, "barrier broken flag"), Catch::Contains("barrier broken flag"));

  // The segment's root offset comes from the server: one near 2^64 must not wrap past
  // the range check, nor may a misaligned one be used.
  auto st = mgr::store::create(1 << 20);
  auto attach = [&](std::size_t off) {
    return mgr::store::attach(mproc::detail::dup_cloexec(st->fd(), "dup"), st->capacity(), off);
  };
  CHECK_THROWS_AS(attach(SIZE_MAX - 8), mproc::serialization_error);
  CHECK_THROWS_AS(attach(st->capacity()), mproc::serialization_error);
  CHECK_THROWS_AS(attach(st->root_offset() + 1), mproc::serialization_error);
  auto again = attach(st->root_offset());
  CHECK(again->root_offset() == st->root_offset());
}

TEST_CASE("oversized message headers close the connection without allocating", "[managers][hostile]") {
  // Server side: authenticate as a client would, then announce a 4 GiB request.
  mproc::Manager m({.authkey = "k"});
  auto fd = mgr::connect_to(m.unix_address(), mgr::deadline_after(5'000'000'000));
  auto d = mgr::deadline_after(5'000'000'000);
  mgr::answer_challenge(fd.get(), "k", d);
  mgr::deliver_challenge(fd.get(), "k", d);
  std::uint32_t huge = 0xFFFFFFFFu;
  mgr::write_all(fd.get(), &huge, 4, d);
  char c;
  pollfd p{fd.get(), POLLIN, 0};
  REQUIRE(::poll(&p, 1, 5000) == 1);
  CHECK(::recv(fd.get(), &c, 1, 0) == 0);  // closed by the server
  // An unauthenticated peer cannot even get that far: the handshake frame is capped.
  auto fd2 = mgr::connect_to(m.unix_address(), d);
  (void)mgr::read_frame(fd2.get(), 256, d);  // the challenge
  mgr::write_all(fd2.get(), &huge, 4, d);
  pollfd p2{fd2.get(), POLLIN, 0};
  REQUIRE(::poll(&p2, 1, 5000) == 1);
  CHECK(::recv(fd2.get(), &c, 1, 0) == 0);

  // Client side: a reply announcing more than the cap raises serialization_error.
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  mproc::detail::unique_fd a(sv[0]), b(sv[1]);
  mgr::write_all(a.get(), &huge, 4, d);
  CHECK_THROWS_AS(mgr::read_frame(b.get(), 1 << 20, d), mproc::serialization_error);
  // A corrupt request body is answered with an error, not a crash.
  CHECK_THROWS_AS(mgr::request::decode("\x01\x02"), mproc::serialization_error);
  CHECK(m.dict<int, int>().size() == 0);  // server still fine
}

TEST_CASE("a vanished server gives a clear error, never a hang", "[managers][death]") {
  SECTION("local proxies") {
    mproc::Manager m;
    auto d = m.dict<std::string, int>();
    auto q = m.Queue<int>();
    d.set("a", 1);
    REQUIRE(::kill(m.server_pid(), SIGKILL) == 0);
    // Wait for the kernel to finish the death (robust-list release).
    int st;
    ::waitpid(m.server_pid(), &st, 0);
    CHECK_THROWS_AS(d.get("a"), mproc::manager_error);
    CHECK_THROWS_AS(d.set("a", 2), mproc::manager_error);
    // Asked again and again, from this thread and others, the answer stays "gone" (a
    // probe that took the dead server's lock once read as "alive" on the third try).
    for (int i = 0; i < 5; ++i) CHECK_THROWS_AS(d.get("a"), mproc::manager_error);
    std::thread([&] { CHECK_THROWS_AS(d.get("a"), mproc::manager_error); }).join();
    CHECK_THROWS_AS(q.get(), mproc::manager_error);  // an untimed wait notices too
    CHECK_THROWS_AS(q.get(5s), mproc::manager_error);
  }
  SECTION("remote proxies") {
    mproc::Manager m({.address = "127.0.0.1:0", .authkey = "k"});
    auto c = mproc::Manager::connect(m.address(), "k");
    auto d = c.dict<std::string, int>("d");
    auto q = c.Queue<int>("q");
    d.set("a", 1);
    mproc::Process p([](mproc::QueueProxy<int> q) { (void)q.get(); }, q);  // blocked in the server
    p.start();
    std::this_thread::sleep_for(100ms);
    REQUIRE(::kill(m.server_pid(), SIGKILL) == 0);
    ::waitpid(m.server_pid(), nullptr, 0);  // fully gone, listening socket closed
    CHECK(finish(p) == 1);  // its get() raised instead of hanging
    // The broken connection, then the refused reconnect: both say the server is gone.
    CHECK_THROWS_AS(d.get("a"), mproc::manager_error);
    CHECK_THROWS_AS(d.get("a"), mproc::manager_error);
  }
  SECTION("shutdown()") {
    mproc::Manager m;
    auto d = m.dict<int, int>();
    m.shutdown();
    CHECK_THROWS_AS(d.size(), mproc::manager_error);
    m.shutdown();  // idempotent
  }
}

TEST_CASE("a process killed holding the shared state lock", "[managers][death]") {
  mproc::Manager m;
  auto d = m.dict<int, int>();
  d.set(1, 1);
  std::shared_ptr<mgr::local_backend> be;
  {
    std::lock_guard g(mgr::registry_mutex());
    be = mgr::local_registry()[m.id()].lock();
  }
  REQUIRE(be);
  mgr::store& st = be->st();
  SECTION("outside a change: the next process takes the lock over, no deadlock") {
    pid_t c = mproc::detail::fork_child([&]() -> int {
      mgr::store::guard g(st, -1);
      ::_exit(0);  // dies holding it
    });
    ::waitpid(c, nullptr, 0);
    CHECK(d.get(1) == 1);
    d.set(2, 2);
    CHECK(d.size() == 2);
  }
  SECTION("in the middle of a change: every later call raises manager_error") {
    pid_t c = mproc::detail::fork_child([&]() -> int {
      mgr::store::guard g(st, -1);
      mgr::store::mutation mu(st);
      ::_exit(0);
    });
    ::waitpid(c, nullptr, 0);
    CHECK_THROWS_AS(d.get(1), mproc::manager_error);
    CHECK_THROWS_AS(d.set(1, 2), mproc::manager_error);
    CHECK_THROWS_AS(m.list<int>(), mproc::manager_error);
  }
}

TEST_CASE("fork while another thread holds the manager's process-local locks", "[managers][fork]") {
  mproc::Manager m;
  auto d = m.dict<int, int>();
  auto bytes = mproc::serialize(d);
  std::atomic<bool> held{false}, release{false};
  std::thread t([&] {
    std::scoped_lock g(mgr::endpoint_cache_mutex(), mgr::registry_mutex(), mgr::updater_mutex());
    held = true;
    while (!release) std::this_thread::sleep_for(1ms);
  });
  while (!held) std::this_thread::sleep_for(1ms);
  mproc::Process p([bytes] {
    auto proxy = mproc::deserialize<mproc::DictProxy<int, int>>(bytes);  // takes the cache lock
    proxy.set(1, 2);
  });
  p.start();
  int code = finish(p, 20s);
  release = true;
  t.join();
  CHECK(code == 0);
  CHECK(d.get(1, 0) == 2);
}

TEST_CASE("no descriptor, process or socket leaks", "[managers][leaks]") {
  auto fds_before = open_fds();
  auto children_before = live_children();
  std::string dir;
  {
    mproc::Manager m({.address = "127.0.0.1:0"});
    dir = std::filesystem::path(m.unix_address()).parent_path();
    CHECK((std::filesystem::status(dir).permissions() & std::filesystem::perms::all) ==
          std::filesystem::perms::owner_all);
    auto d = m.dict<int, int>();
    d.set(1, 2);
    auto c = mproc::Manager::connect(m.address(), m.authkey());
    CHECK(c.dict<int, int>("n").size() == 0);
    auto u = mproc::Manager::connect(m.unix_address(), m.authkey());
    CHECK(u.list<int>("l").size() == 0);
    mproc::Process p([](mproc::DictProxy<int, int> d) { d.set(2, 3); }, d);
    p.start();
    CHECK(finish(p) == 0);
    CHECK(live_children() == children_before + 1);  // the server
  }
  CHECK(open_fds() == fds_before);
  CHECK(live_children() == children_before);
  CHECK_FALSE(std::filesystem::exists(dir));
}

TEST_CASE("option and input errors are typed", "[managers]") {
  CHECK_THROWS_AS(mproc::Manager({.address = "no-port"}), mproc::value_error);
  CHECK_THROWS_AS(mproc::Manager({.capacity = 100}), mproc::value_error);
  CHECK_THROWS_AS(mproc::Manager({.timeout = std::chrono::seconds(0)}), mproc::value_error);
  CHECK_THROWS_AS(mproc::Manager::connect("/nonexistent/mproc.sock", "k"), std::system_error);
  CHECK_THROWS_AS((mproc::DictProxy<int, int>().size()), mproc::state_error);
  mproc::Manager small({.capacity = 1 << 20});
  auto l = small.list<std::string>();
  CHECK_THROWS_AS(
      [&] {
        for (int i = 0; i < 100; ++i) l.append(std::string(64 << 10, 'x'));
      }(),
      mproc::manager_error);
  l.clear();  // still usable after running out of room
  l.append("ok");
  CHECK(l.get(0) == "ok");
  // A negative count or size given as an int arrives as a huge size_t.
  const int minus_one = -1;
  CHECK_THROWS_AS(small.Array<int>(std::size_t(minus_one)), mproc::value_error);
  CHECK_THROWS_AS(small.Barrier(std::size_t(minus_one)), mproc::value_error);
  CHECK_THROWS_AS(small.Barrier(0), mproc::value_error);
  CHECK(small.Barrier(2).parties() == 2);
}

TEST_CASE("a forged create request cannot make a barrier that never releases", "[managers][hostile]") {
  mgr::server_config cfg{mgr::store::create(1 << 20), "k", "forged-uuid", "/nonexistent", 1 << 20, 1'000'000'000};
  // The server is alive while another thread holds its life lock (as the server's main
  // thread does); held until the end of the test.
  std::promise<void> held, done;
  std::thread server_life([&] {
    cfg.st->hold_life();
    held.set_value();
    done.get_future().wait();
  });
  held.get_future().wait();
  auto create = [&](mgr::kind k, std::int64_t m) {
    mgr::request q;
    q.o = mgr::op::create;
    q.n = static_cast<std::int64_t>(k);
    q.m = m;
    q.b.assign(16, '\0');
    return mgr::handle_request(cfg, q.encode(), true).first;
  };
  for (std::int64_t parties : {std::int64_t(0), std::int64_t(-1), std::int64_t(INT32_MAX) + 1})
    CHECK_THROWS_AS(create(mgr::kind::barrier, parties).raise_if_error(), mproc::value_error);
  CHECK_THROWS_AS(create(mgr::kind::semaphore, -1).raise_if_error(), mproc::value_error);
  CHECK_THROWS_AS(create(mgr::kind::bounded_semaphore, -5).raise_if_error(), mproc::value_error);
  // Nothing was made by the refused ones; a good one still is.
  CHECK_FALSE(create(mgr::kind::barrier, 3).error);
  done.set_value();
  server_life.join();
}

TEST_CASE("an owner killed without shutdown: its server exits and removes the socket directory",
          "[managers][death]") {
  int pfd[2];
  REQUIRE(::pipe2(pfd, O_CLOEXEC) == 0);
  mproc::detail::unique_fd rd(pfd[0]), wr(pfd[1]);
  pid_t owner = mproc::detail::fork_child([&]() -> int {
    mproc::Manager m;
    std::string path = m.unix_address() + "\n";
    if (::write(wr.get(), path.data(), path.size()) != static_cast<ssize_t>(path.size())) return 2;
    ::pause();
    return 0;
  });
  wr.reset();
  std::string path;
  char c;
  pollfd p{rd.get(), POLLIN, 0};
  while (::poll(&p, 1, 10000) == 1 && ::read(rd.get(), &c, 1) == 1 && c != '\n') path += c;
  ::kill(owner, SIGKILL);
  ::waitpid(owner, nullptr, 0);
  REQUIRE_FALSE(path.empty());
  auto dir = std::filesystem::path(path).parent_path();
  for (int i = 0; i < 500 && std::filesystem::exists(dir); ++i) std::this_thread::sleep_for(10ms);
  CHECK_FALSE(std::filesystem::exists(dir));
}

namespace {
int record_square(std::tuple<int, mproc::DictProxy<int, int>> args) {
  auto& [x, d] = args;
  d.set(x, x * x);
  d.update(-1, [](int v) { return v + 1; }, 0);
  return x;
}
}  // namespace

TEST_CASE("proxies passed to Pool tasks", "[managers][pool]") {
  // Workers started before the manager did not inherit its segment: they attach
  // through the Unix socket when the first proxy arrives.
  mproc::Pool early(2);
  mproc::Manager m;
  auto d = m.dict<int, int>();
  std::vector<std::tuple<int, mproc::DictProxy<int, int>>> args;
  for (int i = 0; i < 20; ++i) args.emplace_back(i, d);
  auto r = early.map_async(record_square, args).get(60s);  // never hang the test
  CHECK(r.size() == 20);
  CHECK(d.get(-1) == 20);
  for (int i = 0; i < 20; ++i) CHECK(d.get(i) == i * i);
  {
    mproc::Pool late(2);  // workers forked after the manager: the mapping is inherited
    auto r2 = late.map_async(record_square, args).get(60s);
    CHECK(r2.size() == 20);
  }
  CHECK(d.get(-1) == 40);
  early.close();
  early.join();
}

namespace {
void spawn_bump(mproc::DictProxy<std::string, int> d, mproc::ListProxy<int> l) {
  d.update("count", [](int v) { return v + 1; }, 0);
  l.append(7);
}
int pool_bump(mproc::DictProxy<std::string, int> d) {
  d.update("pool", [](int v) { return v + 1; }, 0);
  return 1;
}
}  // namespace

TEST_CASE("proxies work in Process targets and Pool tasks under every start method",
          "[manager][start-methods]") {
  mproc_test::ensure_init();
  mproc::Manager m;
  auto d = m.dict<std::string, int>();
  auto l = m.list<int>();
  int expected = 0;
  for (auto method : {mproc::start_method::fork, mproc::start_method::spawn,
                      mproc::start_method::forkserver}) {
    INFO("start method " << mproc::to_string(method));
    mproc::Process p({.method = method}, spawn_bump, d, l);
    p.start();
    REQUIRE(p.join(std::chrono::seconds(30)));
    REQUIRE(p.exitcode() == 0);
    ++expected;
    REQUIRE(d.get("count") == expected);
    REQUIRE(l.size() == std::size_t(expected));
    mproc::Pool pool({.processes = 2, .method = method});
    auto done = pool.map_async(pool_bump, std::vector<mproc::DictProxy<std::string, int>>(10, d));
    REQUIRE(done.wait(std::chrono::seconds(60)));
    REQUIRE(done.get().size() == 10);
    REQUIRE(d.get("pool") == 10 * expected);
  }
}

#include <sys/stat.h>

#include "test_support.hpp"

TEST_CASE("a runtime directory too long for a socket path is skipped, not failed at bind",
          "[managers][security]") {
  // sockaddr_un holds 108 bytes: a Manager used to put its socket under any writable
  // $XDG_RUNTIME_DIR and fail at bind when the path did not fit.
  char top[] = "/tmp/mproc-long-XXXXXX";
  REQUIRE(::mkdtemp(top) != nullptr);
  std::string longdir = top;
  while (longdir.size() < 120) {
    longdir += "/dddddddddddddddddddd";
    REQUIRE(::mkdir(longdir.c_str(), 0700) == 0);
  }
  auto saved = [](const char* v) { const char* s = std::getenv(v); return s ? std::optional<std::string>(s) : std::nullopt; };
  const auto xdg = saved("XDG_RUNTIME_DIR"), tmp = saved("TMPDIR");
  ::setenv("XDG_RUNTIME_DIR", longdir.c_str(), 1);
  ::unsetenv("TMPDIR");
  std::string where;
  bool worked = false;
  try {
    mproc::Manager m;
    auto d = m.dict<std::string, int>("d");
    d.set("k", 7);
    worked = d.get("k") == 7;
    where = m.unix_address();
  } catch (const std::exception& e) {
    where = e.what();
  }
  if (xdg) ::setenv("XDG_RUNTIME_DIR", xdg->c_str(), 1); else ::unsetenv("XDG_RUNTIME_DIR");
  if (tmp) ::setenv("TMPDIR", tmp->c_str(), 1);
  std::filesystem::remove_all(top);
  INFO(where);
  CHECK(worked);
  CHECK(where.rfind("/tmp/mproc-mgr-", 0) == 0);
}

TEST_CASE("the Unix socket lives in a private 0700 directory; another uid is refused",
          "[managers][security]") {
  mproc::Manager m;
  mproc::Manager other;
  const std::filesystem::path sock = m.unix_address();
  const std::string dir = sock.parent_path().string();
  struct stat sb;
  REQUIRE(::stat(dir.c_str(), &sb) == 0);
  CHECK(S_ISDIR(sb.st_mode));
  CHECK((sb.st_mode & 0777) == 0700);
  CHECK(sb.st_uid == ::geteuid());
  // mkdtemp's random suffix: not a name another user could predict and pre-create.
  const std::string leaf = sock.parent_path().filename().string();
  CHECK(leaf.rfind("mproc-mgr-", 0) == 0);
  CHECK(leaf.size() == 16);
  CHECK(std::filesystem::path(other.unix_address()).parent_path() != sock.parent_path());

  if (::geteuid() != 0) {
    WARN("not root: cannot connect as another uid; the uid check is not exercised");
    return;
  }
  // As another uid: the directory alone keeps it out.
  auto connect_as_nobody = [&]() -> int {
    pid_t pid = mproc::detail::fork_child([&]() -> int {
      if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 10;
      try {
        auto fd = mgr::connect_to(sock.string(), mgr::deadline_after(5'000'000'000));
        // Reached the socket: the server must hang up without sending a challenge.
        char c;
        pollfd p{fd.get(), POLLIN, 0};
        if (::poll(&p, 1, 5000) != 1) return 11;
        return ::recv(fd.get(), &c, 1, 0) == 0 ? 2 : 12;
      } catch (const std::system_error& e) {
        return e.code().value() == EACCES ? 1 : 13;
      }
    });
    return mproc_test::join_child(pid);
  };
  CHECK(connect_as_nobody() == 1);  // EACCES: cannot even reach the socket
  // Opened up by hand (as a careless chmod would): SO_PEERCRED still refuses the uid.
  REQUIRE(::chmod(dir.c_str(), 0711) == 0);
  REQUIRE(::chmod(sock.c_str(), 0777) == 0);
  CHECK(connect_as_nobody() == 2);
  REQUIRE(::chmod(dir.c_str(), 0700) == 0);
  CHECK(m.dict<int, int>().size() == 0);  // the server is unaffected
}
