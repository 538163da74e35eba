// OpenSSL contexts built from the config: one per HTTPS listener (certificate chain, key,
// minimum version) and one per HTTPS target (trust store, CA file, client certificate). Built
// when a config is loaded (so --check reports an unreadable certificate with its path) and
// again for the Runtime that serves it; contexts are shared read-only by all workers.
#pragma once
#include <string>

#include "config/config.hpp"
#include "net/transport.hpp"

namespace dechunkd {

SslCtxPtr make_server_ctx(const TlsListenConfig& tls, std::string* error);
SslCtxPtr make_client_ctx(const TargetTls& tls, std::string* error);

}  // namespace dechunkd
