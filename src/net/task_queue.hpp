// Runs closures on the thread of an event_base: other threads push, the loop runs them.
// Needs libevent's pthread locking (evthread_use_pthreads) for event_active across threads.
#pragma once
#include <event2/event.h>

#include <functional>
#include <mutex>
#include <vector>

#include "net/event.hpp"

namespace dechunkd {

class TaskQueue {
 public:
  explicit TaskQueue(event_base* base) : ev_(event_new(base, -1, 0, on_wake, this)) {}
  TaskQueue(const TaskQueue&) = delete;
  TaskQueue& operator=(const TaskQueue&) = delete;

  // Thread-safe.
  void post(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(fn));
    }
    event_active(ev_.get(), EV_TIMEOUT, 0);
  }

 private:
  static void on_wake(evutil_socket_t, short, void* arg) {
    auto* q = static_cast<TaskQueue*>(arg);
    std::vector<std::function<void()>> tasks;
    {
      std::lock_guard<std::mutex> lock(q->mu_);
      tasks.swap(q->tasks_);
    }
    for (auto& t : tasks) t();
  }
  EventPtr ev_;
  std::mutex mu_;
  std::vector<std::function<void()>> tasks_;
};

}  // namespace dechunkd
