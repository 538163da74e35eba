// OpenSSL contexts built from the config: one per HTTPS listener (certificate chain, key,
// minimum version) and one per HTTPS target (trust store, CA file, client certificate). Built
// when a config is loaded (so --check reports an unreadable certificate with its path) and
// again for the Runtime that serves it; contexts are shared read-only by all workers.
#pragma once
#include <string>

#include "config/config.hpp"
#include "net/transport.hpp"

namespace dechunkd {

// Which file a failed build could not use, so a config error points at that key's value.
enum class TlsFile { Other, Certificate, PrivateKey, CaFile };

SslCtxPtr make_server_ctx(const TlsListenConfig& tls, std::string* error, TlsFile* failed = nullptr);
// Certificate and PrivateKey name the client certificate and key.
SslCtxPtr make_client_ctx(const TargetTls& tls, std::string* error, TlsFile* failed = nullptr);
// Whether a PEM private key file can be loaded on its own (for reporting every error when the
// certificate beside it failed first); *error names the file as `what` and says why not.
bool private_key_loads(const std::string& path, const char* what, std::string* error);

}  // namespace dechunkd
