// Error hierarchy and exception transport between processes.
#include <catch2/catch.hpp>

#include <mproc/detail/remote_exception.hpp>
#include <mproc/errors.hpp>
#include <mproc/serialization.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <future>
#include <ios>
#include <set>
#include <system_error>

using mproc::detail::capture_exception;
using mproc::detail::encoded_exception;
using mproc::detail::exception_kind;

namespace {

template <class E>
std::exception_ptr make(E e) {
  return std::make_exception_ptr(std::move(e));
}

// Captures, crosses a serialize/deserialize round trip, rebuilds.
std::exception_ptr round_trip(std::exception_ptr p, pid_t pid = 4242) {
  encoded_exception enc = capture_exception(p);
  auto bytes = mproc::serialize(enc);
  auto back = mproc::deserialize<encoded_exception>(bytes);
  CHECK(back.kind == enc.kind);
  CHECK(back.type_name == enc.type_name);
  CHECK(back.what == enc.what);
  return mproc::detail::to_exception_ptr(back, pid);
}

// Rethrows p and checks the caught object's exact dynamic type and message.
template <class E>
void expect_exact(std::exception_ptr p, const std::string& what) {
  try {
    std::rethrow_exception(p);
  } catch (const E& e) {
    CHECK(typeid(e) == typeid(E));
    CHECK(std::string(e.what()) == what);
    return;
  } catch (const std::exception& e) {
    FAIL("caught " << mproc::detail::demangle(typeid(e)) << ": " << e.what());
  }
  FAIL("nothing thrown");
}

template <class E>
void check_kind(const std::string& msg) {
  INFO(mproc::type_name<E>());
  expect_exact<E>(round_trip(make(E(msg))), msg);
}

struct user_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct not_an_exception {
  int code;
};

}  // namespace

namespace app {
struct custom_error : std::exception {
  const char* what() const noexcept override { return "custom failure"; }
};
struct app_category_t : std::error_category {
  const char* name() const noexcept override { return "app"; }
  std::string message(int c) const override { return "app error " + std::to_string(c); }
};
const std::error_category& app_category() {
  static app_category_t c;
  return c;
}
}  // namespace app
using app::app_category;

TEST_CASE("mproc errors derive from mproc::error and std::runtime_error") {
  auto is_mproc_error = [](auto e) {
    return std::is_base_of_v<mproc::error, decltype(e)> &&
           std::is_base_of_v<std::runtime_error, decltype(e)>;
  };
  CHECK(is_mproc_error(mproc::remote_error("T", "w", 1)));
  CHECK(is_mproc_error(mproc::worker_died("w", 1, -9, 9)));
  CHECK(is_mproc_error(mproc::timeout_error("w")));
  CHECK(is_mproc_error(mproc::pool_not_running("w")));
  CHECK(is_mproc_error(mproc::serialization_error("w")));
  CHECK(is_mproc_error(mproc::queue_empty("w")));
  CHECK(is_mproc_error(mproc::queue_full("w")));
  CHECK(is_mproc_error(mproc::eof_error("w")));
  CHECK(is_mproc_error(mproc::start_method_error("w")));
  CHECK(is_mproc_error(mproc::authentication_error("w")));
  CHECK(is_mproc_error(mproc::state_error("w")));
  CHECK(is_mproc_error(mproc::key_error("w")));
  CHECK(is_mproc_error(mproc::index_error("w")));
  CHECK(is_mproc_error(mproc::attribute_error("w")));
  // One std::exception base: a catch for std::exception or std::runtime_error takes them.
  CHECK_THROWS_AS(throw mproc::key_error("k"), std::exception);
  CHECK_THROWS_AS(throw mproc::index_error("i"), std::runtime_error);
  CHECK_FALSE(std::is_base_of_v<std::out_of_range, mproc::key_error>);

  mproc::worker_died d("worker died", 77, -9, 9);
  CHECK(d.pid() == 77);
  CHECK(d.exitcode() == -9);
  CHECK(d.signal() == 9);
  CHECK(std::string(d.what()) == "worker died");
}

TEST_CASE("standard exception types come back as the same type with the same what()") {
  check_kind<std::logic_error>("logic");
  check_kind<std::domain_error>("domain");
  check_kind<std::invalid_argument>("bad argument: x=-1");
  check_kind<std::length_error>("too long");
  check_kind<std::out_of_range>("index 7 out of range");
  check_kind<std::runtime_error>("runtime");
  check_kind<std::range_error>("range");
  check_kind<std::overflow_error>("overflow");
  check_kind<std::underflow_error>("underflow");
  check_kind<std::runtime_error>("");  // empty message
  check_kind<std::runtime_error>("utf-8 \xc3\xa9 and stray \xff bytes");
  check_kind<std::runtime_error>(std::string(100000, 'x'));  // long message
}

TEST_CASE("std::bad_alloc comes back as std::bad_alloc") {
  auto p = round_trip(make(std::bad_alloc()));
  CHECK_THROWS_AS(std::rethrow_exception(p), std::bad_alloc);
  CHECK(capture_exception(make(std::bad_alloc())).kind ==
        static_cast<std::uint8_t>(exception_kind::bad_alloc));
}

TEST_CASE("mproc errors come back as the same type") {
  check_kind<mproc::error>("generic");
  check_kind<mproc::timeout_error>("timed out after 5s");
  check_kind<mproc::serialization_error>("corrupt message");
  check_kind<mproc::queue_empty>("empty");
  check_kind<mproc::queue_full>("full");
  check_kind<mproc::eof_error>("peer closed");
  check_kind<mproc::pool_not_running>("closed");
  check_kind<mproc::start_method_error>("no init");
  check_kind<mproc::authentication_error>("bad key");
  check_kind<mproc::state_error>("started twice");
}

// Fields each kind needs to be rebuilt (empty for the kinds that carry none).
std::vector<std::byte> sample_fields(exception_kind k) {
  switch (k) {
    case exception_kind::system_error:
      return mproc::serialize(std::tuple<std::int32_t, std::uint8_t>(EIO, 0));
    case exception_kind::worker_died:
      return mproc::serialize(std::tuple<std::int32_t, std::int32_t, std::int32_t>(5, -9, 9));
    case exception_kind::buffer_too_short: {
      auto f = mproc::serialize(std::vector<std::byte>(3));
      auto cap = mproc::serialize(std::uint64_t(2));
      f.insert(f.end(), cap.begin(), cap.end());
      return f;
    }
    default: return {};
  }
}

TEST_CASE("every kind value rebuilds to a distinct exception type") {
  std::set<std::string> seen;
  for (int k = 0; k < mproc::detail::exception_kind_count; ++k) {
    const auto kind = static_cast<exception_kind>(k);
    encoded_exception e{static_cast<std::uint8_t>(k), "T", "msg", sample_fields(kind)};
    auto p = mproc::detail::to_exception_ptr(e, 1);
    REQUIRE(p);
    try {
      std::rethrow_exception(p);
    } catch (const std::bad_alloc& x) {
      CHECK(k == int(exception_kind::bad_alloc));
      seen.insert(typeid(x).name());
    } catch (const mproc::remote_error& r) {
      CHECK(k == int(exception_kind::remote));
      CHECK(r.type_name() == "T");
      seen.insert(typeid(r).name());
    } catch (const std::exception& x) {
      if (kind != exception_kind::buffer_too_short) CHECK(std::string(x.what()) == "msg");
      // the dynamic type maps back to the same kind
      CHECK(int(mproc::detail::remote_exception_impl::kind_of(typeid(x))) == k);
      seen.insert(typeid(x).name());
    }
  }
  CHECK(seen.size() == std::size_t(mproc::detail::exception_kind_count));
}

TEST_CASE("user types, even derived from standard ones, come back as remote_error") {
  auto check_remote = [](std::exception_ptr p, const std::string& type, const std::string& what,
                         pid_t pid) {
    try {
      mproc::detail::rethrow(mproc::deserialize<encoded_exception>(
                                 mproc::serialize(capture_exception(p))),
                             pid);
    } catch (const mproc::remote_error& e) {
      CHECK(e.type_name() == type);
      CHECK(std::string(e.what()) == what);
      CHECK(e.pid() == pid);
      return;
    } catch (...) {
      FAIL("not a remote_error");
    }
    FAIL("nothing thrown");
  };
  check_remote(make(user_error("derived")), "(anonymous namespace)::user_error", "derived", 11);
  check_remote(make(app::custom_error()), "app::custom_error", "custom failure", 12);
  // a plain std::exception is not one of the carried types either
  check_remote(make(std::exception()), "std::exception", std::exception().what(), 16);
  // nor a system_error whose category belongs to the program
  check_remote(make(std::system_error(3, app_category(), "app call")), "std::system_error",
               std::system_error(3, app_category(), "app call").what(), 17);
}

TEST_CASE("a remote_error forwarded from a nested pool keeps type name, message and pid") {
  auto p = round_trip(make(mproc::remote_error("app::inner_error", "inner", 99)), 15);
  try {
    std::rethrow_exception(p);
  } catch (const mproc::remote_error& e) {
    CHECK(e.type_name() == "app::inner_error");
    CHECK(std::string(e.what()) == "inner");
    CHECK(e.pid() == 99);  // the process that threw it, not the one that forwarded it
  }
}

TEST_CASE("std::system_error keeps its code, category and what()") {
  auto check = [](const std::system_error& sent) {
    INFO(sent.what());
    try {
      std::rethrow_exception(round_trip(make(sent)));
    } catch (const std::system_error& e) {
      CHECK(typeid(e) == typeid(std::system_error));
      CHECK(e.code() == sent.code());
      CHECK(e.code().value() == sent.code().value());
      CHECK(&e.code().category() == &sent.code().category());
      CHECK(std::string(e.what()) == sent.what());
      return;
    }
  };
  check(std::system_error(std::make_error_code(std::errc::io_error), "write"));
  check(std::system_error(std::make_error_code(std::errc::io_error)));
  check(std::system_error(ENOENT, std::system_category(), "open(/nope)"));
  check(std::system_error(ENOENT, std::system_category(), ""));
  check(std::system_error(EPIPE, std::generic_category(), "a: b: c"));
  check(std::system_error(std::make_error_code(std::io_errc::stream), "stream"));
  check(std::system_error(std::make_error_code(std::future_errc::no_state)));
  check(std::system_error(123456, std::system_category(), "unknown code"));

  // A message that no constructor would produce here (another locale on the sender)
  // still arrives verbatim, and a further hop keeps it.
  encoded_exception odd{static_cast<std::uint8_t>(exception_kind::system_error),
                        "std::system_error", "write: E/A à l'écriture",
                        mproc::serialize(std::tuple<std::int32_t, std::uint8_t>(EIO, 1))};
  for (auto p : {mproc::detail::to_exception_ptr(odd, 1),
                 round_trip(mproc::detail::to_exception_ptr(odd, 1))}) {
    try {
      std::rethrow_exception(p);
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::error_code(EIO, std::system_category()));
      CHECK(std::string(e.what()) == "write: E/A à l'écriture");
    }
  }
}

TEST_CASE("mproc errors with fields keep them") {
  try {
    std::rethrow_exception(round_trip(make(mproc::worker_died("worker 5 died", 5, -9, 9))));
  } catch (const mproc::worker_died& e) {
    CHECK(std::string(e.what()) == "worker 5 died");
    CHECK(e.pid() == 5);
    CHECK(e.exitcode() == -9);
    CHECK(e.signal() == 9);
  }
  std::vector<std::byte> msg{std::byte{1}, std::byte{2}, std::byte{3}};
  mproc::buffer_too_short sent(msg, 2);
  try {
    std::rethrow_exception(round_trip(make(sent)));
  } catch (const mproc::buffer_too_short& e) {
    CHECK(std::string(e.what()) == sent.what());
    CHECK(e.message() == msg);
    CHECK(e.capacity() == 2);
  }
  check_kind<mproc::lock_error>("not held");
  check_kind<mproc::broken_barrier_error>("broken");
  check_kind<mproc::manager_error>("server gone");
  check_kind<mproc::cancelled_error>("cancelled");
  check_kind<mproc::value_error>("chunksize must be positive");
  check_kind<mproc::key_error>("key not found");
  check_kind<mproc::index_error>("list index 9 out of range (size 3)");
  check_kind<mproc::attribute_error>("no attribute 'x'");
}

TEST_CASE("corrupt fields raise serialization_error") {
  encoded_exception short_fields{static_cast<std::uint8_t>(exception_kind::worker_died), "w",
                                 "x", mproc::serialize(std::int32_t(5))};
  CHECK_THROWS_AS(mproc::detail::to_exception_ptr(short_fields, 1), mproc::serialization_error);
  encoded_exception extra{static_cast<std::uint8_t>(exception_kind::timeout_error), "t", "x",
                          mproc::serialize(std::int32_t(5))};
  CHECK_THROWS_AS(mproc::detail::to_exception_ptr(extra, 1), mproc::serialization_error);
  encoded_exception bad_category{static_cast<std::uint8_t>(exception_kind::system_error), "s",
                                 "x", mproc::serialize(std::tuple<std::int32_t, std::uint8_t>(5, 77))};
  CHECK_THROWS_AS(mproc::detail::to_exception_ptr(bad_category, 1), mproc::serialization_error);
}

TEST_CASE("non-std::exception throws are described") {
  auto enc = [](std::exception_ptr p) { return capture_exception(p); };
  auto e = enc(make(42));
  CHECK(e.kind == 0);
  CHECK(e.type_name == "int");
  CHECK(e.what == "42");

  e = enc(make<const char*>("plain text"));
  CHECK(e.type_name == "char const*");
  CHECK(e.what == "plain text");

  e = enc(make(std::string("a string")));
  CHECK(e.type_name.find("string") != std::string::npos);
  CHECK(e.what == "a string");

  e = enc(make(2.5));
  CHECK(e.type_name == "double");
  CHECK(e.what.substr(0, 3) == "2.5");

  e = enc(make(-7L));
  CHECK(e.what == "-7");

  e = enc(make(not_an_exception{3}));
  CHECK(e.type_name == "(anonymous namespace)::not_an_exception");
  CHECK(e.what.find("not_an_exception") != std::string::npos);
  CHECK(e.what.find("not derived from std::exception") != std::string::npos);

  e = enc(nullptr);
  CHECK(e.kind == 0);
  CHECK(e.what == "no exception");

  // rebuilt as remote_error with the description
  try {
    mproc::detail::rethrow(enc(make(42)), 321);
    FAIL("nothing thrown");
  } catch (const mproc::remote_error& r) {
    CHECK(r.type_name() == "int");
    CHECK(std::string(r.what()) == "42");
    CHECK(r.pid() == 321);
  }
}

TEST_CASE("exceptions cross a real process boundary") {
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    std::exception_ptr p;
    try {
      throw std::out_of_range("child index 9");
    } catch (...) {
      p = std::current_exception();
    }
    auto bytes = mproc::serialize(capture_exception(p));
    std::uint64_t n = bytes.size();
    bool ok = ::write(fds[1], &n, sizeof n) == sizeof n &&
              ::write(fds[1], bytes.data(), n) == static_cast<ssize_t>(n);
    ::_exit(ok ? 0 : 3);
  }
  ::close(fds[1]);
  std::uint64_t n = 0;
  REQUIRE(::read(fds[0], &n, sizeof n) == sizeof n);
  REQUIRE(n < 4096);
  std::vector<std::byte> buf(n);
  std::size_t got = 0;
  while (got < n) {
    auto r = ::read(fds[0], buf.data() + got, n - got);
    REQUIRE(r > 0);
    got += std::size_t(r);
  }
  ::close(fds[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  auto enc = mproc::deserialize<encoded_exception>(buf);
  expect_exact<std::out_of_range>(mproc::detail::to_exception_ptr(enc, pid), "child index 9");
}

TEST_CASE("corrupt encoded exceptions raise serialization_error") {
  auto bytes = mproc::serialize(encoded_exception{3, "std::invalid_argument", "message", {}});
  for (std::size_t cut = 0; cut < bytes.size(); ++cut)
    CHECK_THROWS_AS(mproc::deserialize<encoded_exception>(std::span(bytes.data(), cut)),
                    mproc::serialization_error);
  // an unknown kind (a newer sender) is still delivered, as remote_error
  encoded_exception odd{200, "future::error", "from the future", {}};
  CHECK_THROWS_AS(mproc::detail::rethrow(odd, 1), mproc::remote_error);
}

namespace app {
struct quota_exceeded : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct fixed_message : std::exception {
  const char* what() const noexcept override { return "fixed"; }
};
struct never_registered : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace app
MPROC_REGISTER_EXCEPTION(app::quota_exceeded);
MPROC_REGISTER_EXCEPTION(app::fixed_message);
MPROC_REGISTER_EXCEPTION(app::quota_exceeded);  // twice is harmless

namespace app {
struct registered_here : std::logic_error {
  using std::logic_error::logic_error;
};
MPROC_REGISTER_EXCEPTION(registered_here);  // inside the type's own namespace
}  // namespace app

// Two different types that print the same name cannot be told apart by name.
namespace {
struct same_name : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace
MPROC_REGISTER_EXCEPTION(same_name);

TEST_CASE("registered exception types come back as themselves") {
  expect_exact<app::quota_exceeded>(round_trip(make(app::quota_exceeded("over quota"))),
                                    "over quota");
  expect_exact<app::fixed_message>(round_trip(make(app::fixed_message())), "fixed");
  expect_exact<app::registered_here>(round_trip(make(app::registered_here("here"))), "here");
  // Found by name: the sender's registration plays no part.
  encoded_exception by_name{0, "app::quota_exceeded", "named", {}};
  expect_exact<app::quota_exceeded>(mproc::detail::to_exception_ptr(by_name, 1), "named");
  // A remote_error naming a registered type (forwarded by a process that did not
  // know the type) becomes that type.
  expect_exact<app::quota_exceeded>(
      round_trip(make(mproc::remote_error("app::quota_exceeded", "forwarded", 7))), "forwarded");
  // unregistered: remote_error as before
  CHECK_THROWS_AS(std::rethrow_exception(round_trip(make(app::never_registered("n")))),
                  mproc::remote_error);
}

TEST_CASE("two registered types with the same name are both left as remote_error") {
  expect_exact<same_name>(round_trip(make(same_name("one"))), "one");
  // Another type under the same printed name, as an anonymous namespace in another
  // file would give: the name no longer says which type to build.
  struct same_name_twin : std::runtime_error {
    using std::runtime_error::runtime_error;
  };
  mproc::detail::register_exception_as<same_name_twin>("(anonymous namespace)::same_name");
  try {
    std::rethrow_exception(round_trip(make(same_name("one"))));
    FAIL("nothing thrown");
  } catch (const mproc::remote_error& e) {
    CHECK(e.type_name() == "(anonymous namespace)::same_name");
    CHECK(std::string(e.what()) == "one");
  }
}
