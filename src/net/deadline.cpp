#include "net/deadline.hpp"

namespace dechunkd {

Deadline::Deadline(event_base* base, void (*fire)(void*), void* arg)
    : ev_(event_new(base, -1, 0, on_timer, this)), fire_(fire), arg_(arg) {}

void Deadline::set(std::chrono::milliseconds d) {
  const Clock::time_point now = Clock::now();
  due_ = now + d;
  // Armed for the same time or earlier: it fires first and re-arms for the rest then.
  if (armed_ == Clock::time_point{} || due_ < armed_) arm(now);
}

void Deadline::stop() {
  due_ = armed_ = Clock::time_point{};
  event_del(ev_.get());
}

void Deadline::arm(Clock::time_point now) {
  // Rounded up to whole milliseconds (never early), at least 1 ms (no busy re-arming).
  auto left = std::chrono::ceil<std::chrono::milliseconds>(due_ - now);
  if (left < std::chrono::milliseconds(1)) left = std::chrono::milliseconds(1);
  arm_timer(ev_.get(), left);
  armed_ = due_;
}

void Deadline::on_timer(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Deadline*>(arg);
  self->armed_ = Clock::time_point{};
  if (self->due_ == Clock::time_point{}) return;  // cleared since it was armed
  const Clock::time_point now = Clock::now();
  if (now < self->due_) {  // moved later since it was armed (or libevent's clock ran ahead)
    self->arm(now);
    return;
  }
  self->due_ = Clock::time_point{};
  self->fire_(self->arg_);  // may destroy the owner, and this Deadline with it: nothing after
}

}  // namespace dechunkd
