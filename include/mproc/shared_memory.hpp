/// \file
/// SharedMemory: a named POSIX shared memory segment (/dev/shm), as Python's
/// multiprocessing.shared_memory.SharedMemory.
///
///   mproc::SharedMemory shm(mproc::create, 1 << 20);            // generated name
///   mproc::SharedMemory named(mproc::create, 4096, "my_data");  // O_CREAT|O_EXCL, 0600
///   mproc::SharedMemory attach("my_data");                       // existing segment
///   std::span<double> v = named.as<double>();
///
/// A SharedMemory is a handle: copies share one mapping (close() on any of them
/// closes it for all). close() and destruction unmap but never unlink; unlink()
/// removes the name. Segments this program creates are registered with the resource
/// tracker, which unlinks whatever is still there when the program ends, even by
/// SIGKILL, and warns about each on stderr. Attaching does not register: only the
/// creator owns the name.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include <sys/mman.h>
#include <sys/stat.h>

#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include "detail/posix/posix.hpp"
#include "detail/posix/shm_region.hpp"
#include "detail/posix/tracker.hpp"
#include "errors.hpp"
#include "detail/handle_passing.hpp"

namespace mproc {

/// Tag selecting SharedMemory's creating constructors.
struct create_t {
  explicit create_t() = default;
};
/// `SharedMemory(mproc::create, size)` creates a segment; without it, one is attached.
inline constexpr create_t create{};

/// A named POSIX shared-memory segment, as Python's `multiprocessing.shared_memory.SharedMemory`.
/// A handle: copies (and the object passed to a child) share one mapping. Segments the
/// program creates and does not unlink are removed by the resource tracker when it ends.
class SharedMemory {
 public:
  /// Creates a segment of `size` bytes with a generated, unguessable name
  /// ("mproc_" and 16 random hex digits).
  SharedMemory(create_t, std::size_t size) {
    check_size(size);
    for (int attempt = 0;; ++attempt) {
      try {
        open(random_name(), size, true);
        return;
      } catch (const std::system_error& e) {
        // A collision of 64 random bits means something else is going on after a few.
        if (e.code() != std::errc::file_exists || attempt == 8) throw;
      }
    }
  }
  /// Creates a segment named `name` (Python's name: no leading slash needed); raises
  /// std::system_error(EEXIST) naming shm_open and the name if it exists.
  SharedMemory(create_t, std::size_t size, std::string_view name) {
    check_size(size);
    open(checked_name(name), size, true);
  }
  /// Attaches to an existing segment; raises std::system_error(ENOENT) naming shm_open
  /// and the name if there is none.
  explicit SharedMemory(std::string_view name) { open(checked_name(name), 0, false); }
  // Copies share the mapping; there is no separate move, so a moved-from handle
  // stays usable (and refers to the same segment).
  /// Another handle on the same mapping.
  SharedMemory(const SharedMemory&) = default;
  /// Another handle on the same mapping.
  SharedMemory& operator=(const SharedMemory&) = default;

  /// The name as the user gave it (no leading slash), as Python reports it.
  [[nodiscard]] const std::string& name() const noexcept { return s_->name; }
  /// Size of the segment in bytes.
  [[nodiscard]] std::size_t size() const noexcept { return s_->size; }
  /// True after close() (the mapping is gone from this process).
  [[nodiscard]] bool closed() const noexcept { return !s_->region; }

  /// The mapped bytes. Raises state_error after close().
  [[nodiscard]] std::span<std::byte> buf() const {
    require_open("buf()");
    return {static_cast<std::byte*>(s_->region->get_address()), s_->size};
  }
  /// The segment viewed as `size() / sizeof(T)` objects of T; raises
  /// mproc::value_error when the size is not a multiple of sizeof(T).
  template <class T>
  [[nodiscard]] std::span<T> as() const {
    static_assert_element<T>();
    if (s_->size % sizeof(T) != 0)
      throw value_error("SharedMemory '" + s_->name + "': size " + std::to_string(s_->size) +
                                  " is not a multiple of sizeof(T) = " + std::to_string(sizeof(T)) +
                                  "; use as<T>(count)");
    return as<T>(s_->size / sizeof(T));
  }
  /// The first `count` objects of T; raises value_error when they do not fit.
  template <class T>
  [[nodiscard]] std::span<T> as(std::size_t count) const {
    static_assert_element<T>();
    require_open("as<T>()");
    if (count > s_->size / sizeof(T))
      throw value_error("SharedMemory '" + s_->name + "': " + std::to_string(count) +
                                  " objects of " + std::to_string(sizeof(T)) + " bytes do not fit in " +
                                  std::to_string(s_->size) + " bytes");
    void* p = s_->region->get_address();
    if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0)
      throw value_error("SharedMemory '" + s_->name + "': mapping is not aligned for T");
    return {static_cast<T*>(p), count};
  }

  /// Maps the pages of [offset, offset + length) into this process, writable, in one
  /// kernel call (MADV_POPULATE_WRITE) instead of one page fault per 4 KiB page on
  /// first use. Worth it before writing a large range: each process faults the pages
  /// of a shared segment in separately, even after fork, and a fault costs more than
  /// the write. Returns false when the kernel cannot do it (before Linux 5.14); the
  /// pages are then simply faulted in on use. Out-of-range parts are clipped.
  bool populate(std::size_t offset = 0, std::size_t length = SIZE_MAX) const {
    require_open("populate()");
    if (offset >= s_->size) return true;
    length = std::min(length, s_->size - offset);
    const std::size_t page = detail::page_size();
    auto* base = static_cast<char*>(s_->region->get_address());
    std::size_t start = offset / page * page;
    std::size_t end = offset + length;
    return detail::populate_for_write(base + start, end - start);
  }

  /// Unmaps the segment in this process (for every copy of this handle). The segment
  /// and its name stay. Idempotent.
  void close() noexcept { s_->region.reset(); }

  /// Removes the name; the memory lives until every process has unmapped it. Raises
  /// std::system_error(ENOENT) if the name is already gone.
  void unlink() {
    detail::shm_unlink_name(s_->shm_name);
    detail::resource_tracker::instance().unregister_name("shared_memory", s_->shm_name);
  }

 private:
  struct state {
    std::string name;      // as given by the user
    std::string shm_name;  // with the leading slash
    std::size_t size = 0;
    std::unique_ptr<boost::interprocess::mapped_region> region;
  };

  template <class T>
  static constexpr void static_assert_element() {
    static_assert(std::is_trivially_copyable_v<T> && !std::is_pointer_v<T>,
                  "SharedMemory::as<T>: T must be trivially copyable and not a pointer: the bytes "
                  "are shared as they are with other processes");
  }

  static void check_size(std::size_t size) {
    if (size == 0) throw value_error("SharedMemory: size must be a positive number of bytes");
    // A negative size converted to size_t, or one no file offset can hold.
    if (size > std::size_t(PTRDIFF_MAX))
      throw value_error("SharedMemory: size " + std::to_string(size) +
                        " is negative or too large (at most " + std::to_string(PTRDIFF_MAX) + ")");
  }

  static std::string checked_name(std::string_view name) {
    std::string_view bare = name;
    if (!bare.empty() && bare.front() == '/') bare.remove_prefix(1);
    if (bare.empty()) throw value_error("SharedMemory: empty name");
    if (bare.size() > 250)
      throw value_error("SharedMemory: name '" + std::string(name) + "' is longer than 250 characters");
    if (bare.find('/') != std::string_view::npos || bare.find('\0') != std::string_view::npos ||
        bare == "." || bare == "..")
      throw value_error("SharedMemory: name '" + std::string(name) +
                                  "' may not contain '/' or NUL after its optional leading '/'");
    return std::string(name);
  }

  static std::string random_name() { return "mproc_" + detail::hex(detail::random_bytes(8)); }

  void open(std::string name, std::size_t size, bool creating) {
    namespace bip = boost::interprocess;
    s_ = std::make_shared<state>();
    s_->name = name.front() == '/' ? name.substr(1) : name;
    s_->shm_name = "/" + s_->name;
    const char* call = creating ? "shm_open(O_CREAT|O_EXCL, 0600)" : "shm_open";
    // Once this constructor has created the name, any failure after it (size, mapping,
    // the tracker itself) removes it again: a constructor that throws leaves nothing.
    bool created_name = false, registered = false;
    auto remove_created = [&]() noexcept {
      if (!created_name) return;
      detail::shm_unlink_quietly(s_->shm_name);
      if (registered) {
        try {
          detail::resource_tracker::instance().unregister_name("shared_memory", s_->shm_name);
        } catch (...) {  // the tracker then reports a name that is already gone: harmless
        }
      }
    };
    try {
      bip::shared_memory_object obj;
      if (creating) {
        bip::permissions perm(0600);
        bip::shared_memory_object created(bip::create_only, s_->name.c_str(), bip::read_write, perm);
        created_name = true;
        obj.swap(created);
        // Registered as soon as the name exists, so that a kill below still gets it
        // removed.
        detail::resource_tracker::instance().register_name("shared_memory", s_->shm_name);
        registered = true;
        call = "ftruncate";
        obj.truncate(static_cast<bip::offset_t>(size));
      } else {
        bip::shared_memory_object attached(bip::open_only, s_->name.c_str(), bip::read_write);
        obj.swap(attached);
        bip::offset_t sz = 0;
        call = "fstat";
        if (!obj.get_size(sz)) detail::throw_errno(("fstat('" + s_->shm_name + "')").c_str());
        if (sz <= 0)
          throw error("SharedMemory '" + s_->name + "': the segment has size 0 and cannot be mapped");
        size = static_cast<std::size_t>(sz);
      }
      call = "mmap";
      s_->region = std::make_unique<bip::mapped_region>(obj, bip::read_write, 0, size);
      s_->size = size;
      // The descriptor is closed when obj goes out of scope; the mapping stays valid.
    } catch (const bip::interprocess_exception& e) {
      remove_created();
      int err = e.get_native_error();
      if (err == 0) err = e.get_error_code() == bip::already_exists_error ? EEXIST : EIO;
      throw std::system_error(err, std::generic_category(),
                              std::string(call) + " '" + s_->shm_name + "'");
    } catch (...) {
      remove_created();
      throw;
    }
  }

  void require_open(const char* what) const {
    if (!s_->region)
      throw state_error("SharedMemory '" + s_->name + "': " + what + " after close()");
  }

  std::shared_ptr<state> s_;
};

namespace detail {

// Passing to a spawn/forkserver child (detail/handle_passing.hpp): by name, as Python does.
template <>
struct handle_traits<SharedMemory> {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector&, const SharedMemory& m) {
    mproc::detail::encode(w, m.name());
  }
  static SharedMemory adopt(reader& r, std::span<const int>) {
    std::string name;
    mproc::detail::decode(r, name);
    return SharedMemory(name);
  }
};

}  // namespace detail

}  // namespace mproc
