/// \file
/// Pool stage 6, imap's results: imap_range, the lazy sequence imap / imap_unordered return.
/// Before: jobs.hpp (its imap_state); next: interface.hpp.
#pragma once

#include <cstdint>
#include <exception>
#include <iterator>
#include <memory>
#include <utility>

#include "async_result.hpp"
#include "jobs.hpp"

namespace mproc {

/// The lazy result sequence of imap / imap_unordered (an input range).
template <class R>
class imap_range {
 public:
  /// Internal: made by imap / imap_unordered.
  explicit imap_range(std::shared_ptr<detail::imap_state<R>> s) : s_(std::move(s)) {}
  /// Moves the sequence; the moved-from object is empty.
  imap_range(imap_range&&) noexcept = default;
  /// Moves the sequence; the moved-from object is empty.
  imap_range& operator=(imap_range&&) noexcept = default;
  ~imap_range() {
    if (s_) {
      s_->abandoned.store(true);
      detail::pool_helper::wake_pool(s_->helper);
    }
  }

  /// Input iterator: each step blocks until the next result arrives, and rethrows the
  /// exception of a task that failed.
  class iterator {
   public:
    ///@{
    /// Input-iterator member (std::input_iterator).
    using value_type = detail::stored_t<R>;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(imap_range* r) : r_(r) { fetch(); }
    value_type& operator*() const { return *cur_; }
    value_type* operator->() const { return &*cur_; }
    iterator& operator++() {
      fetch();
      return *this;
    }
    void operator++(int) { fetch(); }
    bool operator==(std::default_sentinel_t) const { return r_ == nullptr; }
    ///@}

   private:
    void fetch() {
      auto& s = *r_->s_;
      std::variant<value_type, std::exception_ptr> item;
      auto has = [&] {
        if (s.consumed >= s.total) return true;
        if (s.ordered) return !s.ready.empty() && s.ready.begin()->first == s.next;
        return !s.fifo.empty();
      };
      const std::int64_t deadline = s.timeout_ns > 0 ? detail::deadline_after(s.timeout_ns) : detail::no_deadline;
      detail::help_while_waiting(
          s.helper,
          [&] {
            std::lock_guard l(s.m);
            return has() || bool(s.fatal);
          },
          deadline);
      {
        std::unique_lock l(s.m);
        // On timeout nothing is consumed: iterating again waits for the same result.
        if (!detail::wait_until_deadline(s.cv, l, deadline, [&] { return has() || s.fatal; }))
          throw timeout_error("imap: the next result was not ready within map_options::timeout");
        if (!has()) std::rethrow_exception(s.fatal);
        if (s.consumed >= s.total) {
          r_ = nullptr;
          cur_.reset();
          return;
        }
        if (s.ordered) {
          auto node = s.ready.extract(s.ready.begin());
          item = std::move(node.mapped());
          ++s.next;
        } else {
          item = std::move(s.fifo.front());
          s.fifo.pop_front();
        }
        ++s.consumed;
      }
      if (s.blocked.load()) detail::pool_helper::wake_pool(s.helper);
      if (auto* e = std::get_if<std::exception_ptr>(&item)) std::rethrow_exception(*e);
      cur_ = std::move(std::get<value_type>(item));
    }
    imap_range* r_ = nullptr;
    mutable std::optional<value_type> cur_;
  };

  /// The first result (blocks until it arrives; rethrows a task's exception).
  iterator begin() { return iterator(this); }
  /// The end: every input's result has been yielded.
  std::default_sentinel_t end() { return {}; }

  /// Internal: the shared state (used by the pools).
  [[nodiscard]] const std::shared_ptr<detail::imap_state<R>>& state() const noexcept { return s_; }

 private:
  std::shared_ptr<detail::imap_state<R>> s_;
};

}  // namespace mproc
