// Inbound webhook authentication (SPEC 7): basic, bearer, header, hmac and Standard Webhooks
// (epilot's scheme). One Authenticator per route, built when a config is loaded (keys parsed
// once); checks are const and thread-safe. Secrets are compared in constant time and never
// appear in a reason string.
#pragma once
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
};

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

// Splits an Authorization value, "scheme 1*SP credentials" (RFC 9110 11.4), already trimmed of
// outer whitespace. No space: all of it is the scheme and the credentials are empty.
void split_authorization(std::string_view v, std::string_view* scheme, std::string_view* credentials);

}  // namespace dechunkd
