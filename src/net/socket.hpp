// Thin socket helpers for the plain-TCP path (no bufferevents: PERF-NOTES). The TLS transport
// will sit beside these behind the same read/write calls.
#pragma once
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <string_view>

namespace dechunkd {

// Resolves host:port for a listener (numeric or a local name such as "localhost"), creates,
// binds and listens. reuse_port: SO_REUSEPORT so each worker can have its own socket.
// Returns the fd, or -1 with *error set to a sentence for the operator.
int open_listener(const std::string& host, uint16_t port, bool reuse_port, std::string* error,
                  sockaddr_storage* bound = nullptr);

// "127.0.0.1:8080" / "[::1]:8080"
std::string format_sockaddr(const sockaddr* sa);
// The address without the port: "127.0.0.1" / "::1" (for X-Forwarded-For).
std::string format_ip(const sockaddr* sa);
uint16_t sockaddr_port(const sockaddr* sa);

void set_nodelay(int fd);

// accept() failed for want of descriptors or kernel memory: the connection stays in the listen
// backlog and a level-triggered accept event fires again at once, so the caller stops accepting
// for kAcceptPause (as nginx does) instead of spinning.
inline bool accept_must_pause(int error) {
  return error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM;
}
inline constexpr std::chrono::milliseconds kAcceptPause{100};
bool set_nonblocking(int fd);

}  // namespace dechunkd
