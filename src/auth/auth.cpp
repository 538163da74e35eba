// Inbound webhook authentication (SPEC 7, 11): the five auth types behind Authenticator.
// create() prepares everything a check needs (credential digests, decoded secrets, parsed
// Ed25519 keys); checks only read it and make their OpenSSL contexts per call, so one
// Authenticator serves every worker thread. Nothing here throws on the request path: a failure
// is an AuthResult whose reason names what failed, never a secret or a signature value.
#include "auth/auth.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>
#include <system_error>
#include <utility>

#include "auth/encoding.hpp"

namespace dechunkd {
namespace {

using auth_detail::base64_decode;
using auth_detail::hex_decode;

constexpr std::string_view kAuthorization = "Authorization";
constexpr std::string_view kBasicChallenge = "Basic realm=\"dechunkd\", charset=\"UTF-8\"";
constexpr std::string_view kBearerChallenge = "Bearer realm=\"dechunkd\"";

constexpr std::string_view kWebhookId = "webhook-id";
constexpr std::string_view kWebhookTimestamp = "webhook-timestamp";
constexpr std::string_view kWebhookSignature = "webhook-signature";

constexpr size_t kSha256Size = 32;
constexpr size_t kEd25519SignatureSize = 64;
// Signatures looked at per version in one webhook-signature header; further ones are ignored,
// so a crafted header cannot make one request cost hundreds of Ed25519 verifications. Senders
// put one per active secret or key (two during a rotation).
constexpr size_t kMaxSignaturesPerVersion = 16;
// webhook-timestamp: at most 18 digits (< 10^18), and "now" is clamped to +-4 * 10^18, so the
// difference never overflows int64.
constexpr size_t kMaxTimestampDigits = 18;
constexpr int64_t kNowLimit = 4'000'000'000'000'000'000;

AuthResult pass() {
  AuthResult r;
  r.ok = true;
  return r;
}

AuthResult fail(std::string reason, std::string_view challenge = {}) {
  AuthResult r;
  r.reason = std::move(reason);
  r.www_authenticate = std::string(challenge);
  return r;
}

void set_error(std::string* error, std::string message) {
  if (error) *error = std::move(message);
}

struct EvpMacFree {
  void operator()(EVP_MAC* p) const { EVP_MAC_free(p); }
};
struct EvpMacCtxFree {
  void operator()(EVP_MAC_CTX* p) const { EVP_MAC_CTX_free(p); }
};
struct EvpMdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct EvpPkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct FileClose {
  void operator()(FILE* f) const { std::fclose(f); }
};
using EvpMacPtr = std::unique_ptr<EVP_MAC, EvpMacFree>;
using EvpMacCtxPtr = std::unique_ptr<EVP_MAC_CTX, EvpMacCtxFree>;
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, EvpMdCtxFree>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, EvpPkeyFree>;

// Leaves the thread's OpenSSL error queue as it was: a failed verification may queue errors,
// and a stale one would later confuse SSL_get_error() for a TLS connection on the same thread.
class ErrorQueueGuard {
 public:
  ErrorQueueGuard() { ERR_set_mark(); }
  ~ErrorQueueGuard() { ERR_pop_to_mark(); }
  ErrorQueueGuard(const ErrorQueueGuard&) = delete;
  ErrorQueueGuard& operator=(const ErrorQueueGuard&) = delete;
};

// Key bytes, wiped when the Authenticator goes away (a reload drops the old one). Always on the
// heap (a vector), so a move hands over the one copy instead of leaving bytes behind.
class SecretBytes {
 public:
  explicit SecretBytes(std::string_view s) : bytes_(s.begin(), s.end()) {}
  SecretBytes(SecretBytes&&) noexcept = default;
  SecretBytes& operator=(SecretBytes&&) = delete;
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;
  ~SecretBytes() {
    if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
  }
  const unsigned char* data() const { return bytes_.data(); }
  size_t size() const { return bytes_.size(); }

 private:
  std::vector<unsigned char> bytes_;
};

// Wipes a temporary that held received credentials.
void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
}

// Credentials (Basic, Bearer, header value) are kept and compared as SHA-256 digests:
// CRYPTO_memcmp needs equal lengths, and comparing digests keeps both the length and the
// content of the expected value out of the timing. The plain value is not kept.
using Sha256 = std::array<unsigned char, kSha256Size>;

bool sha256(std::string_view s, Sha256* out) {
  unsigned int len = 0;
  return EVP_Digest(s.data(), s.size(), out->data(), &len, EVP_sha256(), nullptr) == 1 &&
         len == out->size();
}

bool matches(const Sha256& expected, std::string_view received) {
  Sha256 got{};
  if (!sha256(received, &got)) return false;
  return CRYPTO_memcmp(got.data(), expected.data(), got.size()) == 0;
}

enum class Presence { Missing, Single, Repeated };

// Finds the field `name` (case-insensitive); *value is set when it occurs exactly once.
Presence find_field(const RequestHead& head, std::string_view name, std::string_view* value) {
  Presence p = Presence::Missing;
  for (const HeaderField& f : head.fields) {
    if (!iequals(f.name, name)) continue;
    if (p == Presence::Single) return Presence::Repeated;
    p = Presence::Single;
    *value = f.value;
  }
  return p;
}

std::string presence_reason(std::string_view name, Presence p) {
  return std::string(name) + (p == Presence::Missing ? " header missing" : " header repeated");
}


// One streaming HMAC; made per call, so concurrent checks share nothing mutable. EVP_MAC itself
// (the fetched algorithm) is immutable and reference-counted: safe to share between threads.
class HmacStream {
 public:
  HmacStream(EVP_MAC* mac, const char* digest, const SecretBytes& key)
      : ctx_(EVP_MAC_CTX_new(mac)) {
    if (!ctx_) return;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>(digest), 0),
        OSSL_PARAM_construct_end()};
    // A NULL key means "keep the previous key" to EVP_MAC_init; an empty key must not be NULL.
    static const unsigned char kNoKey = 0;
    const unsigned char* k = key.size() > 0 ? key.data() : &kNoKey;
    if (EVP_MAC_init(ctx_.get(), k, key.size(), params) != 1) ctx_.reset();
  }
  bool ok() const { return ctx_ != nullptr; }
  bool update(const void* p, size_t n) {
    if (!ctx_) return false;
    if (n == 0) return true;
    if (EVP_MAC_update(ctx_.get(), static_cast<const unsigned char*>(p), n) != 1) {
      ctx_.reset();
      return false;
    }
    return true;
  }
  bool update(std::string_view s) { return update(s.data(), s.size()); }
  // Writes the MAC to out[0..cap); its length, or 0 when any step failed.
  size_t finish(unsigned char* out, size_t cap) {
    size_t len = 0;
    if (!ctx_ || EVP_MAC_final(ctx_.get(), out, &len, cap) != 1) return 0;
    return len;
  }

 private:
  EvpMacCtxPtr ctx_;
};

// ---- basic ---------------------------------------------------------------------------------

class BasicAuthenticator final : public Authenticator {
 public:
  explicit BasicAuthenticator(const Sha256& expected) : expected_(expected) {}
  bool needs_body() const override { return false; }

  AuthResult check_head(const RequestHead& head, int64_t) const override {
    std::string_view value;
    const Presence p = find_field(head, kAuthorization, &value);
    if (p != Presence::Single) return fail(presence_reason(kAuthorization, p), kBasicChallenge);
    std::string_view scheme, credentials;
    split_authorization(value, &scheme, &credentials);
    if (!iequals(scheme, "Basic")) {
      return fail("Authorization scheme is not Basic", kBasicChallenge);
    }
    std::string decoded;
    const bool decoded_ok = base64_decode(credentials, &decoded);
    const bool has_colon = decoded_ok && decoded.find(':') != std::string::npos;
    const bool equal = has_colon && matches(expected_, decoded);
    wipe(decoded);
    if (!decoded_ok) {
      return fail("Authorization Basic credentials are not valid base64", kBasicChallenge);
    }
    if (!has_colon) {
      return fail("Authorization Basic credentials have no ':' between user and password",
                  kBasicChallenge);
    }
    if (!equal) return fail("Basic credentials did not match", kBasicChallenge);
    return pass();
  }

  AuthResult check_body(const RequestHead& head, const BodyBytes&, int64_t now) const override {
    return check_head(head, now);
  }
  std::vector<std::string> strip_names() const override { return {std::string(kAuthorization)}; }

 private:
  Sha256 expected_;  // SHA-256 of "username:password"
};

// ---- bearer --------------------------------------------------------------------------------

class BearerAuthenticator final : public Authenticator {
 public:
  explicit BearerAuthenticator(const Sha256& expected) : expected_(expected) {}
  bool needs_body() const override { return false; }

  AuthResult check_head(const RequestHead& head, int64_t) const override {
    std::string_view value;
    const Presence p = find_field(head, kAuthorization, &value);
    if (p != Presence::Single) return fail(presence_reason(kAuthorization, p), kBearerChallenge);
    std::string_view scheme, token;
    split_authorization(value, &scheme, &token);
    if (!iequals(scheme, "Bearer")) {
      return fail("Authorization scheme is not Bearer", kBearerChallenge);
    }
    if (token.empty()) return fail("Authorization Bearer token missing", kBearerChallenge);
    if (!matches(expected_, token)) return fail("Bearer token did not match", kBearerChallenge);
    return pass();
  }

  AuthResult check_body(const RequestHead& head, const BodyBytes&, int64_t now) const override {
    return check_head(head, now);
  }
  std::vector<std::string> strip_names() const override { return {std::string(kAuthorization)}; }

 private:
  Sha256 expected_;  // SHA-256 of the token
};

// ---- header --------------------------------------------------------------------------------

class HeaderAuthenticator final : public Authenticator {
 public:
  HeaderAuthenticator(std::string name, const Sha256& expected)
      : name_(std::move(name)), expected_(expected) {}
  bool needs_body() const override { return false; }

  AuthResult check_head(const RequestHead& head, int64_t) const override {
    std::string_view value;
    const Presence p = find_field(head, name_, &value);
    if (p != Presence::Single) return fail(presence_reason(name_, p));
    if (!matches(expected_, value)) return fail(name_ + " header did not match");
    return pass();
  }

  AuthResult check_body(const RequestHead& head, const BodyBytes&, int64_t now) const override {
    return check_head(head, now);
  }
  std::vector<std::string> strip_names() const override { return {name_}; }

 private:
  std::string name_;  // as configured
  Sha256 expected_;   // SHA-256 of the value
};

// ---- hmac ----------------------------------------------------------------------------------

class HmacAuthenticator final : public Authenticator {
 public:
  HmacAuthenticator(const AuthConfig& c, EvpMacPtr mac, const char* digest, size_t mac_size)
      : header_(c.header),
        prefix_(c.prefix),
        hex_(c.encoding == "hex"),
        algorithm_(c.algorithm),
        digest_(digest),
        mac_size_(mac_size),
        key_(c.secret),
        mac_(std::move(mac)) {}

  bool needs_body() const override { return true; }

  AuthResult check_head(const RequestHead& head, int64_t) const override {
    std::string received;
    return parse_signature(head, &received);
  }

  AuthResult check_body(const RequestHead& head, const BodyBytes& body, int64_t) const override {
    ErrorQueueGuard guard;
    std::string received;
    AuthResult parsed = parse_signature(head, &received);
    if (!parsed.ok) return parsed;
    HmacStream h(mac_.get(), digest_, key_);
    bool computing = h.ok();
    const bool read = computing && body.visit([&](const char* p, size_t n) {
      computing = h.update(p, n);
      return computing;
    });
    if (!read) return fail(header_ + " not checked: the request body could not be read");
    unsigned char mac[EVP_MAX_MD_SIZE];
    if (!computing || h.finish(mac, sizeof mac) != mac_size_) {
      return fail(header_ + " not checked: computing HMAC-" + algorithm_ + " failed");
    }
    if (CRYPTO_memcmp(mac, received.data(), mac_size_) != 0) {
      return fail(header_ + " did not match the HMAC-" + algorithm_ + " of the body");
    }
    return pass();
  }

  std::vector<std::string> strip_names() const override { return {}; }

 private:
  // The header's value: present once, the prefix (byte for byte), then exactly one MAC in the
  // configured encoding. *out receives the MAC bytes.
  AuthResult parse_signature(const RequestHead& head, std::string* out) const {
    std::string_view value;
    const Presence p = find_field(head, header_, &value);
    if (p != Presence::Single) return fail(presence_reason(header_, p));
    if (value.substr(0, prefix_.size()) != prefix_) {
      return fail(header_ + " does not start with the configured prefix");
    }
    value.remove_prefix(prefix_.size());
    const bool decoded = hex_ ? hex_decode(value, out) : base64_decode(value, out);
    if (!decoded) return fail(header_ + " is not " + (hex_ ? "hex" : "base64"));
    if (out->size() != mac_size_) {
      return fail(header_ + " does not have the length of an HMAC-" + algorithm_);
    }
    return pass();
  }

  std::string header_;     // the signature header's name
  std::string prefix_;     // e.g. "sha256=", may be empty
  bool hex_;               // hex (either case) else standard base64 with padding
  std::string algorithm_;  // "sha256" | "sha512", for reasons
  const char* digest_;     // OpenSSL digest name
  size_t mac_size_;        // 32 or 64
  SecretBytes key_;
  EvpMacPtr mac_;
};

// ---- standard_webhooks ---------------------------------------------------------------------

// What check_head learns from the three webhook-* headers; views point into the head.
struct WebhookHead {
  std::string_view id;
  std::string_view timestamp;  // as received: it is part of the signed content
  std::vector<std::array<unsigned char, kSha256Size>> v1;             // HMAC-SHA256 values
  std::vector<std::array<unsigned char, kEd25519SignatureSize>> v1a;  // Ed25519 signatures
};

bool parse_timestamp(std::string_view s, int64_t* out) {
  if (s.empty() || s.size() > kMaxTimestampDigits) return false;
  int64_t v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

std::string format_tolerance(Millis t) {
  const int64_t ms = t.count();
  return ms % 1000 == 0 ? std::to_string(ms / 1000) + " s" : std::to_string(ms) + " ms";
}

// check_head refuses what the head alone settles; check_body repeats those checks (with its own
// now_unix) and verifies the signatures, so it is the verdict and may be called on its own.
// v1 is verified while streaming the body; v1a (Ed25519) needs a contiguous copy.
class StandardWebhooksAuthenticator final : public Authenticator {
 public:
  StandardWebhooksAuthenticator(EvpMacPtr mac, std::vector<SecretBytes> secrets,
                                std::vector<EvpPkeyPtr> keys, Millis tolerance)
      : mac_(std::move(mac)),
        secrets_(std::move(secrets)),
        keys_(std::move(keys)),
        tolerance_(std::max(tolerance, Millis{0})) {}

  bool needs_body() const override { return true; }

  AuthResult check_head(const RequestHead& head, int64_t now_unix) const override {
    WebhookHead w;
    return parse(head, now_unix, &w);
  }

  AuthResult check_body(const RequestHead& head, const BodyBytes& body,
                        int64_t now_unix) const override {
    ErrorQueueGuard guard;
    WebhookHead w;
    AuthResult parsed = parse(head, now_unix, &w);
    if (!parsed.ok) return parsed;

    // Pass 1: every v1 HMAC at once (one context per secret), and the body size for pass 2.
    std::vector<HmacStream> macs;
    if (!w.v1.empty()) {
      macs.reserve(secrets_.size());
      for (const SecretBytes& s : secrets_) {
        HmacStream& h = macs.emplace_back(mac_.get(), "SHA256", s);
        // A failed update leaves the stream failed: finish() then yields nothing to compare.
        h.update(w.id);
        h.update(".", 1);
        h.update(w.timestamp);
        h.update(".", 1);
      }
    }
    uint64_t body_size = 0;
    const bool read = body.visit([&](const char* p, size_t n) {
      body_size += n;
      for (HmacStream& h : macs) h.update(p, n);
      return true;
    });
    if (!read) return fail("webhook-signature not checked: the request body could not be read");
    for (HmacStream& h : macs) {
      unsigned char mac[EVP_MAX_MD_SIZE];
      if (h.finish(mac, sizeof mac) != kSha256Size) continue;
      for (const auto& sig : w.v1) {
        if (CRYPTO_memcmp(mac, sig.data(), kSha256Size) == 0) return pass();
      }
    }

    // Pass 2, only for v1a: Ed25519 in OpenSSL 3.0 verifies a contiguous message only.
    if (!w.v1a.empty()) {
      AuthResult r = verify_ed25519(w, body, body_size);
      if (r.ok || r.busy || !r.reason.empty()) return r;
    }
    return fail("webhook-signature did not match any configured secret or key");
  }

  std::vector<std::string> strip_names() const override { return {}; }

 private:
  // Everything the head alone settles, in this order: the three headers present once each,
  // the timestamp (digits, within the tolerance), then at least one signature this route can
  // check. Fills *out.
  AuthResult parse(const RequestHead& head, int64_t now_unix, WebhookHead* out) const {
    std::string_view signatures;
    for (const auto& [name, value] :
         {std::pair{kWebhookId, &out->id}, std::pair{kWebhookTimestamp, &out->timestamp},
          std::pair{kWebhookSignature, &signatures}}) {
      const Presence p = find_field(head, name, value);
      if (p != Presence::Single) return fail(presence_reason(name, p));
      if (value->empty()) return fail(std::string(name) + " header is empty");
    }
    int64_t ts = 0;
    if (!parse_timestamp(out->timestamp, &ts)) {
      return fail("webhook-timestamp is not a unix time in seconds");
    }
    const int64_t now = std::clamp(now_unix, -kNowLimit, kNowLimit);
    // |ts - now| s outside tolerance_ ms  <=>  |ts - now| > floor(tolerance_ / 1000), in integers.
    const int64_t limit = tolerance_.count() / 1000;
    if (ts < now - limit) {
      return fail("webhook-timestamp is " + std::to_string(now - ts) +
                  " s in the past, outside the " + format_tolerance(tolerance_) + " tolerance");
    }
    if (ts > now + limit) {
      return fail("webhook-timestamp is " + std::to_string(ts - now) +
                  " s in the future, outside the " + format_tolerance(tolerance_) + " tolerance");
    }
    return parse_signatures(signatures, out);
  }

  // A space-separated list of "<version>,<base64>". v1 (32 bytes) needs a secret and v1a
  // (64 bytes) a public key to be usable; malformed entries and unknown versions are skipped,
  // as the Standard Webhooks spec asks of verifiers.
  AuthResult parse_signatures(std::string_view list, WebhookHead* out) const {
    size_t well_formed = 0;  // v1/v1a entries with a value of the right size, usable or not
    std::string raw;
    size_t pos = 0;
    while (pos < list.size()) {
      const size_t end = std::min(list.find(' ', pos), list.size());
      const std::string_view entry = list.substr(pos, end - pos);
      pos = end + 1;
      const size_t comma = entry.find(',');
      if (comma == std::string_view::npos) continue;
      const std::string_view version = entry.substr(0, comma);
      const bool v1 = version == "v1";
      if (!v1 && version != "v1a") continue;  // a version this gateway does not know
      raw.clear();
      const size_t want = v1 ? kSha256Size : kEd25519SignatureSize;
      if (!base64_decode(entry.substr(comma + 1), &raw) || raw.size() != want) continue;
      ++well_formed;
      if (v1 && !secrets_.empty() && out->v1.size() < kMaxSignaturesPerVersion) {
        std::memcpy(out->v1.emplace_back().data(), raw.data(), want);
      } else if (!v1 && !keys_.empty() && out->v1a.size() < kMaxSignaturesPerVersion) {
        std::memcpy(out->v1a.emplace_back().data(), raw.data(), want);
      }
    }
    if (!out->v1.empty() || !out->v1a.empty()) return pass();
    if (well_formed > 0) {
      return fail(
          "webhook-signature has no signature this route can check (v1 needs secrets, v1a "
          "needs public_keys)");
    }
    return fail("webhook-signature has no well-formed v1 or v1a signature");
  }

  // Gathers id.timestamp.body into one buffer (the only copy of a body in this module) and
  // tries every v1a signature with every key. Memory: one allocation of exactly
  // body + id + timestamp + 2 bytes (at most the route's max_body_size plus the head), held only
  // for this call and only when a v1a signature is present and no v1 signature matched; sized by
  // pass 1, so there is no doubling growth. A spill-file body is read a second time for it. ok, or a failure with a reason when the body
  // could not be gathered; an empty reason means "no match".
  AuthResult verify_ed25519(const WebhookHead& w, const BodyBytes& body, uint64_t body_size) const {
    const size_t head_size = w.id.size() + w.timestamp.size() + 2;
    if (body_size > SIZE_MAX - head_size)
      return fail("webhook-signature not checked: body too large");
    const size_t size = head_size + static_cast<size_t>(body_size);
    // Without this bound, concurrent requests with a made-up v1a signature (no key needed) would
    // each pin their whole body in memory.
    SignedContentBudget& budget = ed25519_content_budget();
    if (!budget.try_take(size)) {
      AuthResult busy;
      busy.busy = true;
      busy.reason = "webhook-signature (v1a) not checked yet: other large Ed25519-signed bodies are being checked";
      return busy;
    }
    struct GiveBack {
      SignedContentBudget& budget;
      size_t size;
      ~GiveBack() { budget.give_back(size); }
    } give_back{budget, size};
    std::unique_ptr<unsigned char[]> msg(new (std::nothrow) unsigned char[size]);
    if (!msg) return fail("webhook-signature not checked: out of memory for the signed content");
    size_t used = 0;
    auto append = [&](const void* p, size_t n) {
      if (n > size - used) return false;  // the body grew between the two passes
      if (n > 0) std::memcpy(msg.get() + used, p, n);
      used += n;
      return true;
    };
    append(w.id.data(), w.id.size());
    append(".", 1);
    append(w.timestamp.data(), w.timestamp.size());
    append(".", 1);
    bool fits = true;
    const bool read = body.visit([&](const char* p, size_t n) {
      fits = append(p, n);
      return fits;
    });
    if (!read || !fits || used != size) {
      return fail("webhook-signature not checked: the request body could not be read");
    }
    for (const EvpPkeyPtr& key : keys_) {
      for (const auto& sig : w.v1a) {
        EvpMdCtxPtr ctx(EVP_MD_CTX_new());
        if (ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) == 1 &&
            EVP_DigestVerify(ctx.get(), sig.data(), sig.size(), msg.get(), size) == 1) {
          return pass();
        }
      }
    }
    return AuthResult{};
  }

  EvpMacPtr mac_;                     // HMAC, null when there are no secrets
  std::vector<SecretBytes> secrets_;  // decoded bytes after "whsec_"
  std::vector<EvpPkeyPtr> keys_;      // Ed25519 public keys, read-only after create
  Millis tolerance_;                  // accepted |timestamp - now|
};

// Reads one PEM public key and checks it is Ed25519 and usable for verification.
EvpPkeyPtr load_ed25519_key(const std::string& path, std::string* error) {
  errno = 0;
  std::unique_ptr<FILE, FileClose> f(std::fopen(path.c_str(), "rb"));
  if (!f) {
    set_error(error,
              "public key " + path + ": cannot be read: " + std::generic_category().message(errno));
    return nullptr;
  }
  EvpPkeyPtr key(PEM_read_PUBKEY(f.get(), nullptr, nullptr, nullptr));
  if (!key) {
    set_error(error, "public key " + path +
                         ": no PEM public key (-----BEGIN PUBLIC KEY-----) could be read");
    return nullptr;
  }
  if (EVP_PKEY_get_id(key.get()) != EVP_PKEY_ED25519) {
    const char* type = EVP_PKEY_get0_type_name(key.get());
    set_error(error, "public key " + path + ": is " + (type ? type : "an unknown type") +
                         ", not an Ed25519 public key");
    return nullptr;
  }
  // Once here rather than on the first request: a key the provider cannot use is a load error.
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1) {
    set_error(error, "public key " + path + ": cannot be used for Ed25519 verification");
    return nullptr;
  }
  return key;
}

EvpMacPtr fetch_hmac(std::string* error) {
  EvpMacPtr mac(EVP_MAC_fetch(nullptr, OSSL_MAC_NAME_HMAC, nullptr));
  if (!mac) set_error(error, "OpenSSL provides no HMAC");
  return mac;
}

std::unique_ptr<Authenticator> create_hmac(const AuthConfig& c, std::string* error) {
  const char* digest = nullptr;
  size_t size = 0;
  if (c.algorithm == "sha256") {
    digest = "SHA256";
    size = 32;
  } else if (c.algorithm == "sha512") {
    digest = "SHA512";
    size = 64;
  } else {
    set_error(error, "hmac algorithm must be sha256 or sha512");
    return nullptr;
  }
  if (c.encoding != "hex" && c.encoding != "base64") {
    set_error(error, "hmac encoding must be hex or base64");
    return nullptr;
  }
  if (c.header.empty()) {
    set_error(error, "hmac needs a header name");
    return nullptr;
  }
  EvpMacPtr mac = fetch_hmac(error);
  if (!mac) return nullptr;
  auto auth = std::make_unique<HmacAuthenticator>(c, std::move(mac), digest, size);
  return auth;
}

std::unique_ptr<Authenticator> create_standard_webhooks(const AuthConfig& c, std::string* error) {
  if (c.secrets.empty() && c.public_keys.empty()) {
    set_error(error, "standard_webhooks needs 'secrets' or 'public_keys' (or both)");
    return nullptr;
  }
  constexpr std::string_view kPrefix = "whsec_";
  std::vector<SecretBytes> secrets;
  secrets.reserve(c.secrets.size());
  for (size_t i = 0; i < c.secrets.size(); ++i) {
    const std::string_view s = c.secrets[i];
    std::string bytes;
    if (s.substr(0, kPrefix.size()) != kPrefix ||
        !base64_decode(s.substr(kPrefix.size()), &bytes)) {
      wipe(bytes);
      // The value itself is not repeated: it is a secret.
      set_error(error, "standard_webhooks secret " + std::to_string(i + 1) + " of " +
                           std::to_string(c.secrets.size()) +
                           " is not 'whsec_' followed by standard base64");
      return nullptr;
    }
    secrets.emplace_back(bytes);
    wipe(bytes);
  }
  std::vector<EvpPkeyPtr> keys;
  for (const std::string& path : c.public_keys) {
    EvpPkeyPtr key = load_ed25519_key(path, error);
    if (!key) return nullptr;
    keys.push_back(std::move(key));
  }
  EvpMacPtr mac;
  if (!secrets.empty()) {
    mac = fetch_hmac(error);
    if (!mac) return nullptr;
  }
  return std::make_unique<StandardWebhooksAuthenticator>(std::move(mac), std::move(secrets),
                                                         std::move(keys), c.tolerance);
}

std::unique_ptr<Authenticator> create_with_digest(const AuthConfig& c, std::string* error) {
  Sha256 digest{};
  std::string credentials;
  switch (c.type) {
    case AuthType::Basic:
      credentials = c.username + ":" + c.password;
      break;
    case AuthType::Bearer:
      credentials = c.token;
      break;
    default:
      credentials = c.value;
      break;
  }
  const bool hashed = sha256(credentials, &digest);
  wipe(credentials);
  if (!hashed) {
    set_error(error, "OpenSSL provides no SHA-256");
    return nullptr;
  }
  switch (c.type) {
    case AuthType::Basic:
      return std::make_unique<BasicAuthenticator>(digest);
    case AuthType::Bearer:
      return std::make_unique<BearerAuthenticator>(digest);
    default:
      if (c.name.empty()) {
        set_error(error, "auth type header needs a header name");
        return nullptr;
      }
      return std::make_unique<HeaderAuthenticator>(c.name, digest);
  }
}

}  // namespace

bool ed25519_public_key_usable(const std::string& path, std::string* error) {
  return load_ed25519_key(path, error) != nullptr;
}

bool SignedContentBudget::try_take(uint64_t n) {
  uint64_t cur = held_.load(std::memory_order_relaxed);
  do {
    if (cur != 0 && (n > limit_ || cur > limit_ - n)) return false;
  } while (!held_.compare_exchange_weak(cur, cur + n, std::memory_order_relaxed));
  return true;
}

SignedContentBudget& ed25519_content_budget() {
  static SignedContentBudget budget(64ull << 20);
  return budget;
}

// "scheme 1*SP credentials" (RFC 9110 11.4); the codec already trimmed the outer whitespace.
void split_authorization(std::string_view v, std::string_view* scheme,
                         std::string_view* credentials) {
  const size_t sp = v.find(' ');
  *scheme = v.substr(0, sp);
  *credentials = {};
  if (sp == std::string_view::npos) return;
  const size_t start = v.find_first_not_of(' ', sp);
  if (start != std::string_view::npos) *credentials = v.substr(start);
}

std::unique_ptr<Authenticator> Authenticator::create(const AuthConfig& config, std::string* error) {
  ErrorQueueGuard guard;
  switch (config.type) {
    case AuthType::Basic:
    case AuthType::Bearer:
    case AuthType::Header:
      return create_with_digest(config, error);
    case AuthType::Hmac:
      return create_hmac(config, error);
    case AuthType::StandardWebhooks:
      return create_standard_webhooks(config, error);
  }
  set_error(error, "unknown auth type");
  return nullptr;
}

}  // namespace dechunkd
