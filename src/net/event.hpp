// Ownership of libevent handles (STYLE 4): every handle lives in a unique_ptr with a deleter.
#pragma once
#include <event2/dns.h>
#include <event2/event.h>

#include <chrono>
#include <memory>

namespace dechunkd {

struct EventDeleter {
  void operator()(event* e) const { event_free(e); }
};
struct EventBaseDeleter {
  void operator()(event_base* b) const { event_base_free(b); }
};
struct EvdnsDeleter {
  void operator()(evdns_base* d) const { evdns_base_free(d, 1); }
};
using EventPtr = std::unique_ptr<event, EventDeleter>;
using EventBasePtr = std::unique_ptr<event_base, EventBaseDeleter>;
using EvdnsPtr = std::unique_ptr<evdns_base, EvdnsDeleter>;

inline timeval to_timeval(std::chrono::milliseconds d) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(d.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((d.count() % 1000) * 1000);
  return tv;
}

inline void arm_timer(event* ev, std::chrono::milliseconds d) {
  timeval tv = to_timeval(d);
  event_add(ev, &tv);
}

}  // namespace dechunkd
