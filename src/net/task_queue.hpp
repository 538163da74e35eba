// Runs closures on the thread of an event_base: other threads push, the loop runs them.
// The wake-up is an eventfd, so the worker bases need no libevent locking (EVENT_BASE_FLAG_NOLOCK:
// no mutex on every event_add/event_del of the request path).
#pragma once
#include <event2/event.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "net/event.hpp"

namespace dechunkd {

class TaskQueue {
 public:
  explicit TaskQueue(event_base* base) : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    ev_.reset(event_new(base, fd_, EV_READ | EV_PERSIST, on_wake, this));
    event_add(ev_.get(), nullptr);
  }
  ~TaskQueue() {
    ev_.reset();
    if (fd_ >= 0) ::close(fd_);
  }
  TaskQueue(const TaskQueue&) = delete;
  TaskQueue& operator=(const TaskQueue&) = delete;

  // Thread-safe.
  void post(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(fn));
    }
    uint64_t one = 1;
    ssize_t n = ::write(fd_, &one, sizeof one);  // the counter cannot overflow in practice
    (void)n;
  }

 private:
  static void on_wake(evutil_socket_t fd, short, void* arg) {
    auto* q = static_cast<TaskQueue*>(arg);
    uint64_t count;
    ssize_t n = ::read(fd, &count, sizeof count);
    (void)n;
    std::vector<std::function<void()>> tasks;
    {
      std::lock_guard<std::mutex> lock(q->mu_);
      tasks.swap(q->tasks_);
    }
    for (auto& t : tasks) t();
  }
  int fd_;
  EventPtr ev_;
  std::mutex mu_;
  std::vector<std::function<void()>> tasks_;
};

}  // namespace dechunkd
