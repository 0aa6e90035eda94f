// The manager's operations on its segment: execute() runs one request (from a local
// proxy, or from the server for a TCP client) under the root mutex, with the waiting
// helpers the blocking operations share. Apart from manager_store.hpp, which lays
// the segment out, so the layout reads on its own.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "manager_messages.hpp"
#include "manager_store.hpp"

namespace mproc::detail::mgr {

/// A list that may change size (not an Array).
inline object& resizable_list(store& s, std::uint64_t id) {
  object& o = s.find(id, kind::list);
  if (o.k == kind::array)
    throw manager_error("mproc::Manager: an Array has a fixed size (object " + std::to_string(id) + ")");
  return o;
}

/// Python's slice bound: negative counts from the end, then clamped to [0, size].
inline std::size_t clamp_index(std::int64_t i, std::size_t size) {
  const std::int64_t n = static_cast<std::int64_t>(size);
  if (i < 0) i = std::max<std::int64_t>(0, i + n);
  return std::size_t(std::min(i, n));
}

inline void bump(std::atomic<std::uint32_t>& w) noexcept {
  w.fetch_add(1);
  futex_wake(&w);
}

/// The caller's token in a request naming the holder of an RLock or Condition.
inline std::uint64_t owner_token(const request& q) {
  std::uint64_t t = 0;
  if (q.b.size() != sizeof t) throw serialization_error("corrupt manager request: no owner token");
  std::memcpy(&t, q.b.data(), sizeof t);
  if (t == 0) throw serialization_error("corrupt manager request: owner token 0");
  return t;
}

inline std::int64_t normalize_index(std::int64_t i, std::size_t size, const char* what) {
  std::int64_t n = static_cast<std::int64_t>(size);
  std::int64_t j = i < 0 ? i + n : i;
  if (j < 0 || j >= n)
    throw index_error(std::string(what) + " index " + std::to_string(i) +
                      " out of range (size " + std::to_string(size) + ")");
  return j;
}

/// Waits on a futex word in slices so that a vanished server is noticed; returns
/// false at the deadline.
inline bool wait_word(store& s, const std::atomic<std::uint32_t>& w, std::uint32_t seen, deadline_t d) {
  constexpr std::int64_t slice = 100'000'000;
  const std::int64_t left = d == no_deadline ? slice : std::min<std::int64_t>(slice, ns_left(d));
  if (left == 0) return false;
  futex_wait(&w, seen, left);
  s.check_alive();
  return true;
}

/// Ends a Barrier's round: the parties inside are released (with broken_barrier_error
/// when `broken`), and the next round starts empty.
inline void next_round(object& o, bool broken) noexcept {
  const std::uint64_t bit = std::uint64_t(1) << (o.round % 64);
  if (broken) o.broken_rounds |= bit;
  else o.broken_rounds &= ~bit;
  ++o.round;
  o.broken_rounds &= ~(std::uint64_t(1) << (o.round % 64));
  o.count = 0;
  bump(o.release_seq);
}

/// Runs attempt(object) under the root mutex until it returns true; in between
/// sleeps on the object's futex word w (sampled under the mutex, so no change is
/// missed). False at the deadline, or at once when nonblocking.
template <class F>
bool wait_until(store& s, std::uint64_t id, kind k, std::atomic<std::uint32_t> object::*w, deadline_t d,
                bool nonblocking, F attempt) {
  for (;;) {
    std::uint32_t seen;
    object* o = nullptr;
    {
      store::guard g(s, s.lock_timeout_ns);
      o = &s.find(id, k);
      if (attempt(*o)) return true;
      seen = (o->*w).load();
    }
    if (nonblocking || !wait_word(s, o->*w, seen, d)) return false;
  }
}

/// Runs one operation against the segment. `fn` serves dict_update in the caller's
/// process; a server executing a remote request passes the registered updater.
inline response execute(store& s, const request& q, const updater* fn = nullptr) {
  s.check_alive();
  response out;
  try {
    switch (q.o) {
      case op::create: {
        if (q.n < 1 || q.n > static_cast<std::int64_t>(last_kind))
          throw value_error("manager: unknown object kind " + std::to_string(q.n));
        kind k = static_cast<kind>(q.n);
        std::uint64_t t[2] = {0, 0};
        if (q.b.size() == sizeof t) std::memcpy(t, q.b.data(), sizeof t);
        store::guard g(s, s.lock_timeout_ns);
        root& r = s.r();
        if (!q.a.empty()) {
          auto it = r.names.find(std::string_view(q.a));
          if (it != r.names.end()) {
            object& o = *r.objects.find(it->second)->second;
            if (o.k != k)
              throw manager_error("mproc::Manager: \"" + q.a + "\" is a " + kind_name(o.k) +
                                  ", not a " + kind_name(k));
            if (o.tag1 != t[0] || o.tag2 != t[1])
              throw serialization_error("mproc::Manager: \"" + q.a + "\" holds " + tag_name(o.tag1) +
                                        (o.tag2 ? " -> " + tag_name(o.tag2) : std::string()) +
                                        ", requested " + tag_name(t[0]) +
                                        (t[1] ? " -> " + tag_name(t[1]) : std::string()));
            out.n = static_cast<std::int64_t>(it->second);
            break;
          }
        }
        // The client refuses these; a forged request must not make a barrier that can
        // never release or a semaphore below zero (checked before anything changes).
        if (k == kind::barrier && (q.m < 1 || q.m > INT32_MAX))
          throw value_error("mproc::Manager: Barrier parties out of range");
        if ((k == kind::semaphore || k == kind::bounded_semaphore) && q.m < 0)
          throw value_error("mproc::Manager: a semaphore's initial value must be >= 0");
        std::uint64_t id = r.next_id;
        store::mutation mu(s);
        object* o = s.seg().construct<object>(bip::anonymous_instance)(s.alloc(), k, t[0], t[1]);
        o->maxsize = q.m > 0 ? std::uint64_t(q.m) : 0;
        switch (k) {
          case kind::semaphore:
          case kind::bounded_semaphore:
            o->count = o->bound = q.m;  // the initial value (checked above)
            break;
          case kind::barrier:
            o->bound = q.m;  // parties
            if (q.list.size() == 1 && q.list[0].size() == sizeof(std::int64_t))
              std::memcpy(&o->default_timeout_ns, q.list[0].data(), sizeof(std::int64_t));
            break;
          case kind::array:
            o->list.reserve(q.list.size());
            for (auto& e : q.list) o->list.push_back(s.str(e));
            break;
          default:
            if (q.list.size() == 1) o->value.assign(q.list[0].data(), q.list[0].size());  // a Value's initial value
        }
        try {
          r.objects.emplace(id, o);
          if (!q.a.empty()) r.names.emplace(s.str(q.a), id);
        } catch (...) {
          r.objects.erase(id);
          s.seg().destroy_ptr(o);
          throw;
        }
        ++r.next_id;
        out.n = static_cast<std::int64_t>(id);
        break;
      }
      case op::dict_set: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        auto it = o.dict.find(std::string_view(q.a));
        store::mutation mu(s);
        if (it != o.dict.end()) it->second.value.assign(q.b.data(), q.b.size());
        else o.dict.emplace(s.str(q.a), dict_entry{s.str(q.b), o.next_seq++});
        break;
      }
      case op::dict_get:
      case op::dict_pop: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        auto it = o.dict.find(std::string_view(q.a));
        if (it != o.dict.end()) {
          out.a.assign(it->second.value.data(), it->second.value.size());
          out.n = 1;
          if (q.o == op::dict_pop) {
            store::mutation mu(s);
            o.dict.erase(it);
          }
        }
        break;
      }
      case op::dict_contains: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        out.n = o.dict.find(std::string_view(q.a)) != o.dict.end();
        break;
      }
      case op::dict_erase: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        auto it = o.dict.find(std::string_view(q.a));
        if (it != o.dict.end()) {
          store::mutation mu(s);
          o.dict.erase(it);
          out.n = 1;
        }
        break;
      }
      case op::dict_size: {
        store::guard g(s, s.lock_timeout_ns);
        out.n = static_cast<std::int64_t>(s.find(q.id, kind::dict).dict.size());
        break;
      }
      case op::dict_items: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        std::vector<const dict_map::value_type*> v;
        v.reserve(o.dict.size());
        for (auto& e : o.dict) v.push_back(&e);
        std::sort(v.begin(), v.end(), [](auto* x, auto* y) { return x->second.seq < y->second.seq; });
        out.list.reserve(v.size() * 2);
        for (auto* e : v) {
          out.list.emplace_back(sv(e->first));
          out.list.emplace_back(sv(e->second.value));
        }
        break;
      }
      case op::dict_clear: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        store::mutation mu(s);
        o.dict.clear();
        break;
      }
      case op::dict_update: {
        if (!fn) throw manager_error("manager: update without a function");
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        auto it = o.dict.find(std::string_view(q.a));
        std::string result;
        if (it != o.dict.end()) {
          std::string_view cur = sv(it->second.value);
          result = (*fn)(&cur, q.b);
          store::mutation mu(s);
          it->second.value.assign(result.data(), result.size());
        } else {
          result = (*fn)(nullptr, q.b);
          store::mutation mu(s);
          o.dict.emplace(s.str(q.a), dict_entry{s.str(result), o.next_seq++});
        }
        out.a = std::move(result);
        break;
      }
      case op::list_append:
      case op::list_extend: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = resizable_list(s, q.id);
        store::mutation mu(s);
        ++o.next_seq;
        if (q.o == op::list_append) {
          o.list.push_back(s.str(q.b));
        } else {
          o.list.reserve(o.list.size() + q.list.size());
          for (auto& e : q.list) o.list.push_back(s.str(e));
        }
        break;
      }
      case op::list_get: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        out.a = sv(o.list[std::size_t(normalize_index(q.n, o.list.size(), "list"))]);
        break;
      }
      case op::list_set: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        auto i = std::size_t(normalize_index(q.n, o.list.size(), "list assignment"));
        store::mutation mu(s);
        ++o.next_seq;
        o.list[i].assign(q.b.data(), q.b.size());
        break;
      }
      case op::list_pop: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = resizable_list(s, q.id);
        if (o.list.empty()) throw index_error("pop from empty list");
        auto i = std::size_t(normalize_index(q.n, o.list.size(), "pop"));
        out.a = sv(o.list[i]);
        store::mutation mu(s);
        ++o.next_seq;
        o.list.erase(o.list.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
      case op::list_size: {
        store::guard g(s, s.lock_timeout_ns);
        out.n = static_cast<std::int64_t>(s.find(q.id, kind::list).list.size());
        break;
      }
      case op::list_items: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        out.list.reserve(o.list.size());
        for (auto& e : o.list) out.list.emplace_back(sv(e));
        out.n = static_cast<std::int64_t>(o.next_seq);  // the version, for list_assign_if
        break;
      }
      case op::list_clear: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = resizable_list(s, q.id);
        store::mutation mu(s);
        ++o.next_seq;
        o.list.clear();
        break;
      }
      case op::queue_put: {
        const bool put = wait_until(s, q.id, kind::queue, &object::get_seq, deadline_after(q.m), q.n == 1,
                                    [&](object& o) {
                                      if (o.maxsize && o.queue.size() >= o.maxsize) return false;
                                      {
                                        store::mutation mu(s);
                                        o.queue.push_back(s.str(q.b));
                                      }
                                      if (o.k == kind::joinable_queue) ++o.count;  // one more unfinished task
                                      bump(o.put_seq);
                                      return true;
                                    });
        if (!put) throw mproc::queue_full("manager Queue is full");
        break;
      }
      case op::queue_get: {
        const bool got = wait_until(s, q.id, kind::queue, &object::put_seq, deadline_after(q.m), q.n == 1,
                                    [&](object& o) {
                                      if (o.queue.empty()) return false;
                                      out.a = sv(o.queue.front());
                                      {
                                        store::mutation mu(s);
                                        o.queue.pop_front();
                                      }
                                      bump(o.get_seq);
                                      return true;
                                    });
        if (!got) throw mproc::queue_empty("manager Queue is empty");
        break;
      }
      case op::queue_size: {
        store::guard g(s, s.lock_timeout_ns);
        out.n = static_cast<std::int64_t>(s.find(q.id, kind::queue).queue.size());
        break;
      }
      case op::lock_acquire: {
        out.n = wait_until(s, q.id, kind::lock, &object::release_seq, deadline_after(q.m), q.n == 1,
                           [](object& o) {
                             if (o.locked) return false;
                             o.locked = 1;
                             return true;
                           });
        break;
      }
      case op::lock_release: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::lock);
        if (!o.locked) throw state_error("release of an unlocked manager Lock");
        o.locked = 0;
        bump(o.release_seq);
        break;
      }
      case op::value_get: {
        store::guard g(s, s.lock_timeout_ns);
        out.a = sv(s.find(q.id, kind::value).value);
        break;
      }
      case op::value_set: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::value);
        store::mutation mu(s);
        o.value.assign(q.b.data(), q.b.size());
        break;
      }
      case op::destroy: {
        store::guard g(s, s.lock_timeout_ns);
        root& r = s.r();
        auto it = r.objects.find(q.id);
        if (it == r.objects.end()) break;  // already gone: destroying twice is harmless
        object* o = it->second.get();
        store::mutation mu(s);
        for (auto n = r.names.begin(); n != r.names.end();) {
          if (n->second == q.id) n = r.names.erase(n);
          else ++n;
        }
        r.objects.erase(it);
        // Wake anyone blocked on it: their next look-up reports the object gone.
        o->put_seq.fetch_add(1), o->get_seq.fetch_add(1), o->release_seq.fetch_add(1);
        futex_wake(&o->put_seq), futex_wake(&o->get_seq), futex_wake(&o->release_seq);
        s.seg().destroy_ptr(o);
        out.n = 1;
        break;
      }

      case op::list_count: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        out.n = std::count_if(o.list.begin(), o.list.end(), [&](const auto& e) { return sv(e) == q.b; });
        break;
      }
      case op::list_index: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        const std::size_t from = clamp_index(q.n, o.list.size()), to = clamp_index(q.m, o.list.size());
        out.n = -1;
        for (std::size_t i = from; i < to; ++i)
          if (sv(o.list[i]) == q.b) {
            out.n = static_cast<std::int64_t>(i);
            break;
          }
        if (out.n < 0) throw value_error("list.index(x): x not in list");
        break;
      }
      case op::list_insert: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = resizable_list(s, q.id);
        const std::size_t i = clamp_index(q.n, o.list.size());
        store::mutation mu(s);
        ++o.next_seq;
        o.list.insert(o.list.begin() + static_cast<std::ptrdiff_t>(i), s.str(q.b));
        break;
      }
      case op::list_remove: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = resizable_list(s, q.id);
        auto it = std::find_if(o.list.begin(), o.list.end(), [&](const auto& e) { return sv(e) == q.b; });
        if (it == o.list.end()) throw value_error("list.remove(x): x not in list");
        store::mutation mu(s);
        ++o.next_seq;
        o.list.erase(it);
        break;
      }
      case op::list_reverse: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        store::mutation mu(s);
        ++o.next_seq;
        // Swapping shm strings of one allocator exchanges their buffers: no copies.
        std::reverse(o.list.begin(), o.list.end());
        break;
      }
      case op::list_assign_if: {
        // Replaces the contents if nothing changed them since list_items reported
        // version q.n (a sort done by the caller, never lost to a concurrent change).
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        if (static_cast<std::int64_t>(o.next_seq) != q.n) break;  // out.n == 0: retry
        if (q.list.size() != o.list.size())
          throw manager_error("mproc::Manager: list_assign_if with another size");
        store::mutation mu(s);
        ++o.next_seq;
        for (std::size_t i = 0; i < q.list.size(); ++i) o.list[i].assign(q.list[i].data(), q.list[i].size());
        out.n = 1;
        break;
      }
      case op::dict_popitem: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        if (o.dict.empty()) throw key_error("popitem(): dictionary is empty");
        // Last in, first out, as Python's dict.
        auto last = std::max_element(o.dict.begin(), o.dict.end(),
                                     [](const auto& x, const auto& y) { return x.second.seq < y.second.seq; });
        out.list = {std::string(sv(last->first)), std::string(sv(last->second.value))};
        store::mutation mu(s);
        o.dict.erase(last);
        break;
      }
      case op::dict_setdefault: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        auto it = o.dict.find(std::string_view(q.a));
        if (it != o.dict.end()) {
          out.a = sv(it->second.value);
        } else {
          store::mutation mu(s);
          o.dict.emplace(s.str(q.a), dict_entry{s.str(q.b), o.next_seq++});
          out.a = q.b;
        }
        break;
      }
      case op::queue_full: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::queue);
        out.n = o.maxsize && o.queue.size() >= o.maxsize;
        break;
      }
      case op::event_set:
      case op::event_clear: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::event);
        o.locked = q.o == op::event_set;
        if (o.locked) bump(o.release_seq);
        break;
      }
      case op::event_is_set: {
        store::guard g(s, s.lock_timeout_ns);
        out.n = s.find(q.id, kind::event).locked;
        break;
      }
      case op::event_wait: {
        out.n = wait_until(s, q.id, kind::event, &object::release_seq, deadline_after(q.m), false,
                           [](object& o) { return o.locked != 0; });
        break;
      }
      case op::sem_acquire: {
        out.n = wait_until(s, q.id, kind::semaphore, &object::release_seq, deadline_after(q.m), q.n == 1,
                           [](object& o) {
                             if (o.count <= 0) return false;
                             --o.count;
                             return true;
                           });
        break;
      }
      case op::sem_release: {
        if (q.n < 1) throw value_error("Semaphore.release(n): n must be at least 1");
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::semaphore);
        if (o.k == kind::bounded_semaphore && o.count > o.bound - q.n)
          throw value_error("BoundedSemaphore released too many times");
        o.count += q.n;
        bump(o.release_seq);
        break;
      }
      case op::sem_value: {
        store::guard g(s, s.lock_timeout_ns);
        out.n = s.find(q.id, kind::semaphore).count;
        break;
      }
      case op::rlock_acquire: {
        const std::uint64_t me = owner_token(q);
        out.n = wait_until(s, q.id, kind::rlock, &object::release_seq, deadline_after(q.m), q.n == 1,
                           [me](object& o) {
                             if (o.owner != 0 && o.owner != me) return false;
                             o.owner = me;
                             ++o.depth;
                             return true;
                           });
        break;
      }
      case op::rlock_release: {
        const std::uint64_t me = owner_token(q);
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::rlock);
        if (o.owner != me) throw state_error("cannot release un-acquired lock");
        if (--o.depth == 0) {
          o.owner = 0;
          bump(o.release_seq);
        }
        break;
      }
      case op::cond_wait: {
        const std::uint64_t me = owner_token(q);
        std::uint32_t depth = 0;
        {
          store::guard g(s, s.lock_timeout_ns);
          object& o = s.find(q.id, kind::condition);
          if (o.owner != me) throw state_error("cannot wait on un-acquired lock");
          depth = o.depth;
          o.owner = 0, o.depth = 0;
          ++o.waiters;
          bump(o.release_seq);
        }
        bool notified = wait_until(s, q.id, kind::condition, &object::get_seq, deadline_after(q.m), false,
                                   [](object& o) {
                                     if (o.tokens <= 0) return false;
                                     --o.tokens;
                                     return true;
                                   });
        if (!notified) {
          // Timed out; a notification that came meanwhile is still this waiter's.
          store::guard g(s, s.lock_timeout_ns);
          object& o = s.find(q.id, kind::condition);
          if (o.tokens > 0) --o.tokens, notified = true;
          else --o.waiters;
        }
        // The lock comes back whatever happened, as in Python.
        wait_until(s, q.id, kind::condition, &object::release_seq, -1, false, [me, depth](object& o) {
          if (o.owner != 0) return false;
          o.owner = me, o.depth = depth;
          return true;
        });
        out.n = notified;
        break;
      }
      case op::cond_notify: {
        const std::uint64_t me = owner_token(q);
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::condition);
        if (o.owner != me) throw state_error("cannot notify on un-acquired lock");
        const std::int64_t n = q.n < 0 ? o.waiters : std::min<std::int64_t>(q.n, o.waiters);
        o.waiters -= n;
        o.tokens += n;
        if (n > 0) bump(o.get_seq);
        break;
      }
      case op::barrier_wait: {
        const std::int64_t timeout = q.m == -2 ? std::int64_t(-3) : q.m;  // -2: the default, read below
        std::uint64_t round = 0;
        std::int64_t t = timeout;
        {
          store::guard g(s, s.lock_timeout_ns);
          object& o = s.find(q.id, kind::barrier);
          if (t == -3) t = o.default_timeout_ns;
          if (o.broken) throw broken_barrier_error("Barrier.wait(): the barrier is broken");
          round = o.round;
          out.n = o.count++;
          if (o.count == o.bound) {  // the last party releases the round
            next_round(o, false);
            break;
          }
        }
        bool ended = wait_until(s, q.id, kind::barrier, &object::release_seq, deadline_after(t), false,
                                [round](object& o) { return o.round != round || o.broken; });
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::barrier);
        if (o.round != round) {
          if (o.broken_rounds & (std::uint64_t(1) << (round % 64)))
            throw broken_barrier_error("Barrier.wait(): the barrier was reset or broken while waiting");
          break;  // released
        }
        if (!ended && !o.broken) {  // timed out: break the barrier, as Python does
          const std::int64_t missing = o.bound - o.count;
          o.broken = 1;
          next_round(o, true);
          throw broken_barrier_error("Barrier.wait(): timed out waiting for " + std::to_string(missing) +
                                     " more parties");
        }
        throw broken_barrier_error("Barrier.wait(): the barrier was broken while waiting");
      }
      case op::barrier_reset:
      case op::barrier_abort: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::barrier);
        if (q.o == op::barrier_abort) {
          o.broken = 1;
          next_round(o, true);
        } else {
          // Parties waiting now are released with broken_barrier_error.
          if (o.count > 0) next_round(o, true);
          o.broken = 0;
        }
        break;
      }
      case op::barrier_info: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::barrier);
        out.n = o.bound;
        out.list = {std::to_string(o.broken ? 0 : o.count), std::to_string(o.broken),
                    std::to_string(o.default_timeout_ns)};
        break;
      }
      case op::queue_task_done: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::joinable_queue);
        if (o.count <= 0) throw value_error("task_done() called too many times");
        if (--o.count == 0) bump(o.release_seq);
        break;
      }
      case op::queue_join: {
        out.n = wait_until(s, q.id, kind::joinable_queue, &object::release_seq, deadline_after(q.m), false,
                           [](object& o) { return o.count == 0; });
        break;
      }
      case op::attach:
      case op::hello:
        throw manager_error("manager: connection-level request outside a connection");
      default:
        throw serialization_error("manager: unknown operation " + std::to_string(int(q.o)));
    }
  } catch (const bip::bad_alloc&) {
    throw manager_error("mproc::Manager: shared memory full (capacity " + std::to_string(s.capacity()) +
                        " bytes); raise manager_options::capacity");
  }
  return out;
}

}  // namespace mproc::detail::mgr
