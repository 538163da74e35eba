// A connection timeout that is cheap to move. The gateway's timers change several times per
// request (header -> body -> none while the target answers -> idle; the target's response
// timeout; a pooled connection's idle timeout), and each libevent event_add/event_del of a timer
// is a min-heap operation. A Deadline records the due time instead and touches libevent only
// when the new due time is earlier than the one its timer is armed for. When the timer fires
// before the due time (it moved later meanwhile), it re-arms for the rest; after clear() it does
// nothing. The owner's callback runs from the event loop once the due time has passed.
#pragma once
#include <chrono>

#include "net/event.hpp"

namespace dechunkd {

class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  Deadline(event_base* base, void (*fire)(void*), void* arg);
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  // Due d from now, replacing any earlier setting. The callback runs at least 1 ms after the call
  // (a zero or sub-millisecond d is not "at once").
  void set(std::chrono::milliseconds d);
  // Not due at all. The libevent timer may stay armed; it does nothing when it fires.
  void clear() { due_ = Clock::time_point{}; }
  // Not due, and the libevent timer is stopped too (the owner is closing).
  void stop();
  bool pending() const { return due_ != Clock::time_point{}; }

 private:
  static void on_timer(evutil_socket_t, short, void* arg);
  void arm(Clock::time_point now);

  EventPtr ev_;
  Clock::time_point due_{};    // when the owner's timeout is due; the epoch: not due
  Clock::time_point armed_{};  // when ev_ fires; the epoch: ev_ is not armed
  void (*fire_)(void*);
  void* arg_;
};

}  // namespace dechunkd
