// Thin socket helpers for the plain-TCP path (no bufferevents: PERF-NOTES). The TLS transport
// will sit beside these behind the same read/write calls.
#pragma once
#include <netinet/in.h>
#include <sys/socket.h>

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
bool set_nonblocking(int fd);

}  // namespace dechunkd
