// Deadline: the lazily re-armed connection timeout. Never fires before its due time (by
// steady_clock), fires once, not at all after clear() or stop(), and a later setting replaces an
// earlier one without re-adding the libevent timer. Only lower bounds on time are asserted.
#include <doctest/doctest.h>

#include <chrono>
#include <optional>

#include "net/deadline.hpp"

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {
struct Probe {
  int fired = 0;
  Clock::time_point at{};
  static void fire(void* p) {
    auto* self = static_cast<Probe*>(p);
    ++self->fired;
    self->at = Clock::now();
  }
};

// Runs the loop until nothing is pending any more (each Deadline's timer is one-shot).
void run(event_base* base) { event_base_dispatch(base); }
}  // namespace

TEST_CASE("Deadline: fires once, not before it is due") {
  dechunkd::EventBasePtr base(event_base_new());
  Probe p;
  dechunkd::Deadline d(base.get(), Probe::fire, &p);
  const auto t0 = Clock::now();
  d.set(30ms);
  CHECK(d.pending());
  run(base.get());
  CHECK(p.fired == 1);
  CHECK(p.at - t0 >= 30ms);
  CHECK_FALSE(d.pending());
}

TEST_CASE("Deadline: moved later, it fires at the later time, once") {
  dechunkd::EventBasePtr base(event_base_new());
  Probe p;
  dechunkd::Deadline d(base.get(), Probe::fire, &p);
  d.set(10ms);
  const auto t1 = Clock::now();
  d.set(60ms);  // the timer stays armed for 10 ms and re-arms for the rest when it fires
  run(base.get());
  CHECK(p.fired == 1);
  CHECK(p.at - t1 >= 60ms);
}

TEST_CASE("Deadline: moved earlier, it fires at the earlier time") {
  dechunkd::EventBasePtr base(event_base_new());
  Probe p;
  dechunkd::Deadline d(base.get(), Probe::fire, &p);
  d.set(10s);
  const auto t1 = Clock::now();
  d.set(20ms);
  run(base.get());
  CHECK(p.fired == 1);
  CHECK(p.at - t1 >= 20ms);
  CHECK(p.at - t1 < 10s);
}

TEST_CASE("Deadline: cleared, it never fires; set again, it fires") {
  dechunkd::EventBasePtr base(event_base_new());
  Probe p;
  dechunkd::Deadline d(base.get(), Probe::fire, &p);
  d.set(10ms);
  d.clear();
  CHECK_FALSE(d.pending());
  run(base.get());  // the armed timer fires and does nothing
  CHECK(p.fired == 0);

  d.set(10ms);
  d.stop();
  run(base.get());  // stopped: nothing is pending, the loop returns at once
  CHECK(p.fired == 0);

  const auto t2 = Clock::now();
  d.set(15ms);
  run(base.get());
  CHECK(p.fired == 1);
  CHECK(p.at - t2 >= 15ms);
}

TEST_CASE("Deadline: the owner may destroy it from its callback") {
  dechunkd::EventBasePtr base(event_base_new());
  struct Owner {
    std::optional<dechunkd::Deadline> d;
    int fired = 0;
    static void fire(void* p) {
      auto* self = static_cast<Owner*>(p);
      ++self->fired;
      self->d.reset();  // like a pooled connection removed by its idle timeout
    }
  } o;
  o.d.emplace(base.get(), Owner::fire, &o);
  o.d->set(5ms);
  run(base.get());
  CHECK(o.fired == 1);
  CHECK_FALSE(o.d.has_value());
}
