// Inbound webhook authentication (SPEC 7): basic, bearer, header, hmac and Standard Webhooks
// (epilot's scheme). One Authenticator per route, built when a config is loaded (keys parsed
// once); checks are const and thread-safe. Secrets are compared in constant time and never
// appear in a reason string.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "http/request_head.hpp"

namespace dechunkd {

// The de-chunked body as a sequence of pieces (in memory and/or a spill file); visit() calls
// fn for each piece in order and stops early when fn returns false. Returns false if reading
// failed (e.g. the spill file).
class BodyBytes {
 public:
  virtual ~BodyBytes() = default;
  virtual bool visit(const std::function<bool(const char*, size_t)>& fn) const = 0;
};

struct AuthResult {
  bool ok = false;
  std::string reason;            // for the operator log: what failed (no secret, no signature value)
  std::string www_authenticate;  // the WWW-Authenticate value for a 401 (basic/bearer), else empty
  // Not decided: the check would hold more signed content than SignedContentBudget allows now.
  // The answer is 503 with Retry-After (the sender tries again), not 401.
  bool busy = false;
};

// Ed25519 (standard_webhooks v1a) is verified over the signed content in one piece (OpenSSL 3.0
// has no streaming Ed25519), so a body spooled to disk is read back into memory while it is
// checked. This bounds what all workers hold for that at once: one body of any size (up to
// max_body_size) may always be checked, more only within the limit.
class SignedContentBudget {
 public:
  explicit SignedContentBudget(uint64_t limit) : limit_(limit) {}
  bool try_take(uint64_t n);  // false: n does not fit next to what others hold
  void give_back(uint64_t n) { held_.fetch_sub(n, std::memory_order_relaxed); }
  uint64_t held() const { return held_.load(std::memory_order_relaxed); }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> held_{0};
};

// The process's budget for Ed25519-signed content: 64 MiB.
SignedContentBudget& ed25519_content_budget();

class Authenticator {
 public:
  // Builds from a validated AuthConfig (PEM public keys are read here). nullptr with *error
  // when a key cannot be loaded.
  static std::unique_ptr<Authenticator> create(const AuthConfig& config, std::string* error);
  virtual ~Authenticator() = default;

  // True for hmac and standard_webhooks: the verdict needs the whole body.
  virtual bool needs_body() const = 0;
  // basic, bearer, header: decided from the head. For body types: checks what the head alone can
  // (signature header present and well-formed, timestamp within tolerance) so a hopeless request
  // is refused before its body is read.
  virtual AuthResult check_head(const RequestHead& head, int64_t now_unix) const = 0;
  // hmac, standard_webhooks: verifies the signature over the exact body bytes.
  virtual AuthResult check_body(const RequestHead& head, const BodyBytes& body, int64_t now_unix) const = 0;
  // Field names the gateway checked and removes before forwarding (Authorization for
  // basic/bearer, the header's name for type header). Signature headers are kept.
  virtual std::vector<std::string> strip_names() const = 0;
};

// Whether a standard_webhooks public key file holds a usable Ed25519 PEM public key (the config
// check reports a bad one at its own list entry); *error says why not.
bool ed25519_public_key_usable(const std::string& path, std::string* error);

// Splits an Authorization value, "scheme 1*SP credentials" (RFC 9110 11.4), already trimmed of
// outer whitespace. No space: all of it is the scheme and the credentials are empty.
void split_authorization(std::string_view v, std::string_view* scheme, std::string_view* credentials);

}  // namespace dechunkd
