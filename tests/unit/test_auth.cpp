// Inbound authentication (SPEC 7, 11): each auth type with credentials and signatures built the
// way a sender builds them (OpenSSL one-shot HMAC, EVP_EncodeBlock, a fresh Ed25519 key pair),
// bodies split into many pieces, and the Standard Webhooks test vector.
#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "auth/auth.hpp"
#include "auth/encoding.hpp"
#include "http/request_head.hpp"

using namespace dechunkd;

namespace {

using Fields = std::vector<std::pair<std::string, std::string>>;

// A head parsed from raw bytes by the real parser, as the codec hands it to auth. Not movable:
// the RequestHead's views point into raw_.
class Head {
 public:
  explicit Head(const Fields& fields) {
    raw_ = "POST /hook HTTP/1.1\r\nHost: gw.example\r\n";
    for (const auto& [name, value] : fields) raw_ += name + ": " + value + "\r\n";
    raw_ += "\r\n";
    const auto error = parse_request_head(raw_, HeadLimits{}, &head_);
    REQUIRE_FALSE(error.has_value());
  }
  Head(const Head&) = delete;
  Head& operator=(const Head&) = delete;
  operator const RequestHead&() const { return head_; }

 private:
  std::string raw_;
  RequestHead head_;
};

// A body in pieces, as the connection code gives it (memory blocks and/or a spill file).
class PiecesBody final : public BodyBytes {
 public:
  explicit PiecesBody(std::vector<std::string> pieces) : pieces_(std::move(pieces)) {}
  bool visit(const std::function<bool(const char*, size_t)>& fn) const override {
    for (const std::string& p : pieces_) {
      if (!fn(p.data(), p.size())) break;
    }
    return true;
  }

 private:
  std::vector<std::string> pieces_;
};

// A body whose spill file fails to read.
class FailingBody final : public BodyBytes {
 public:
  bool visit(const std::function<bool(const char*, size_t)>& fn) const override {
    fn("par", 3);
    return false;
  }
};

// Braced field lists would be ambiguous with Head's deleted copy constructor; a prvalue
// return needs no copy or move.
Head head_of(const Fields& fields) { return Head(fields); }

PiecesBody whole(const std::string& s) { return PiecesBody({s}); }

// Every piece of `size` bytes (the last one shorter), plus empty pieces in between.
PiecesBody split(const std::string& s, size_t size) {
  std::vector<std::string> pieces;
  for (size_t i = 0; i < s.size(); i += size) {
    pieces.push_back(s.substr(i, size));
    pieces.emplace_back();
  }
  return PiecesBody(std::move(pieces));
}

std::string b64(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()),
                                static_cast<int>(in.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string hex(std::string_view in, bool upper = false) {
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string out;
  for (const char c : in) {
    const auto u = static_cast<unsigned char>(c);
    out += digits[u >> 4];
    out += digits[u & 15];
  }
  return out;
}

std::string hmac(const EVP_MD* md, std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  REQUIRE(HMAC(md, key.data(), static_cast<int>(key.size()),
               reinterpret_cast<const unsigned char*>(data.data()), data.size(), out,
               &len) != nullptr);
  return std::string(reinterpret_cast<char*>(out), len);
}

std::unique_ptr<Authenticator> make(const AuthConfig& c) {
  std::string error;
  auto a = Authenticator::create(c, &error);
  INFO(error);
  REQUIRE(a != nullptr);
  return a;
}

std::string create_error(const AuthConfig& c) {
  std::string error;
  auto a = Authenticator::create(c, &error);
  CHECK(a == nullptr);
  return error;
}

AuthConfig basic_config() {
  AuthConfig c;
  c.type = AuthType::Basic;
  c.username = "epilot";
  c.password = "s3cr:et";
  return c;
}

constexpr int64_t kNow = 1'700'000'000;

}  // namespace

TEST_CASE("encoding: strict base64 and hex") {
  using auth_detail::base64_decode;
  using auth_detail::hex_decode;
  std::string out;
  CHECK(base64_decode("aGVsbG8=", &out));
  CHECK(out == "hello");
  out.clear();
  CHECK(base64_decode("aGVsbA==", &out));
  CHECK(out == "hell");
  out.clear();
  CHECK(base64_decode("aGVs", &out));
  CHECK(out == "hel");
  out.clear();
  CHECK(base64_decode("+/+/", &out));
  CHECK(out == "\xfb\xff\xbf");
  for (const char* bad : {"", "aGVsbG8", "aGVsbA=", "aGVsbA", "aGV=bA==", "====", "A===",
                          "aGVs bA==", "-_-_", "aGVsbG8=\n", "aGVsbA===", "aG\x00s"}) {
    CAPTURE(bad);
    std::string o;
    CHECK_FALSE(base64_decode(bad, &o));
  }
  out.clear();
  CHECK(hex_decode("00ff7Fa0", &out));
  CHECK(out == std::string("\x00\xff\x7f\xa0", 4));
  for (const char* bad : {"", "0", "0g", "0x00", " 00", "abc"}) {
    CAPTURE(bad);
    std::string o;
    CHECK_FALSE(hex_decode(bad, &o));
  }
}

TEST_CASE("basic: right, wrong, missing, malformed, other scheme") {
  const auto a = make(basic_config());
  const std::string challenge = "Basic realm=\"dechunkd\", charset=\"UTF-8\"";
  CHECK_FALSE(a->needs_body());
  CHECK(a->strip_names() == std::vector<std::string>{"Authorization"});

  const std::string good = "Basic " + b64("epilot:s3cr:et");
  CHECK(a->check_head(head_of({{"Authorization", good}}), kNow).ok);
  CHECK(a->check_head(head_of({{"authorization", "basic  " + b64("epilot:s3cr:et")}}), kNow).ok);
  CHECK(a->check_head(head_of({{"Authorization", "BASIC " + b64("epilot:s3cr:et")}}), kNow).ok);
  CHECK(a->check_body(head_of({{"Authorization", good}}), whole(""), kNow).ok);

  struct Case {
    std::vector<std::pair<std::string, std::string>> fields;
    const char* reason;
  };
  const std::vector<Case> cases = {
      {{}, "Authorization header missing"},
      {{{"Authorization", good}, {"Authorization", good}}, "Authorization header repeated"},
      {{{"Authorization", "Basic " + b64("epilot:wrong")}}, "Basic credentials did not match"},
      {{{"Authorization", "Basic " + b64("Epilot:s3cr:et")}}, "Basic credentials did not match"},
      {{{"Authorization", "Basic " + b64("epilot:s3cr:et ")}}, "Basic credentials did not match"},
      {{{"Authorization", "Basic " + b64("epilot:s3cr")}}, "Basic credentials did not match"},
      {{{"Authorization", "Basic " + b64("epilots3cr:et")}}, "Basic credentials did not match"},
      {{{"Authorization", "Basic " + b64("nocolon")}},
       "Authorization Basic credentials have no ':' between user and password"},
      {{{"Authorization", "Basic ZXBpbG90OnMzY3I6ZXQ"}},
       "Authorization Basic credentials are not valid base64"},
      {{{"Authorization", "Basic epilot:s3cr:et"}},
       "Authorization Basic credentials are not valid base64"},
      {{{"Authorization", "Basic"}}, "Authorization Basic credentials are not valid base64"},
      {{{"Authorization", "Bearer " + b64("epilot:s3cr:et")}}, "Authorization scheme is not Basic"},
      {{{"Authorization", b64("epilot:s3cr:et")}}, "Authorization scheme is not Basic"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.reason);
    const AuthResult r = a->check_head(head_of(c.fields), kNow);
    CHECK_FALSE(r.ok);
    CHECK(r.reason == c.reason);
    CHECK(r.www_authenticate == challenge);
    CHECK(r.reason.find("s3cr") == std::string::npos);
  }
}

TEST_CASE("bearer: token, scheme case-insensitive") {
  AuthConfig c;
  c.type = AuthType::Bearer;
  c.token = "tok-123.abc";
  const auto a = make(c);
  const std::string challenge = "Bearer realm=\"dechunkd\"";
  CHECK_FALSE(a->needs_body());
  CHECK(a->strip_names() == std::vector<std::string>{"Authorization"});
  CHECK(a->check_head(head_of({{"Authorization", "Bearer tok-123.abc"}}), kNow).ok);
  CHECK(a->check_head(head_of({{"AUTHORIZATION", "bearer tok-123.abc"}}), kNow).ok);
  CHECK(a->check_head(head_of({{"Authorization", "bEaReR   tok-123.abc"}}), kNow).ok);

  struct Case {
    std::vector<std::pair<std::string, std::string>> fields;
    const char* reason;
  };
  const std::vector<Case> cases = {
      {{}, "Authorization header missing"},
      {{{"Authorization", "Bearer tok-123.abc"}, {"Authorization", "Bearer tok-123.abc"}},
       "Authorization header repeated"},
      {{{"Authorization", "Bearer tok-123.abd"}}, "Bearer token did not match"},
      {{{"Authorization", "Bearer tok-123.ab"}}, "Bearer token did not match"},
      {{{"Authorization", "Bearer tok-123.abcd"}}, "Bearer token did not match"},
      {{{"Authorization", "Bearer TOK-123.ABC"}}, "Bearer token did not match"},
      {{{"Authorization", "Bearer tok-123.abc x"}}, "Bearer token did not match"},
      {{{"Authorization", "Bearer"}}, "Authorization Bearer token missing"},
      {{{"Authorization", "Basic tok-123.abc"}}, "Authorization scheme is not Bearer"},
      {{{"Authorization", "tok-123.abc"}}, "Authorization scheme is not Bearer"},
      {{{"X-Token", "Bearer tok-123.abc"}}, "Authorization header missing"},
  };
  for (const Case& k : cases) {
    CAPTURE(k.reason);
    const AuthResult r = a->check_head(head_of(k.fields), kNow);
    CHECK_FALSE(r.ok);
    CHECK(r.reason == k.reason);
    CHECK(r.www_authenticate == challenge);
  }
}

TEST_CASE("header: the named header must equal the value") {
  AuthConfig c;
  c.type = AuthType::Header;
  c.name = "X-API-Key";
  c.value = "k e y";
  const auto a = make(c);
  CHECK_FALSE(a->needs_body());
  CHECK(a->strip_names() == std::vector<std::string>{"X-API-Key"});
  CHECK(a->check_head(head_of({{"X-API-Key", "k e y"}}), kNow).ok);
  CHECK(a->check_head(head_of({{"x-api-key", "k e y"}}), kNow).ok);
  CHECK(a->check_body(head_of({{"x-api-key", "k e y"}}), whole("x"), kNow).ok);

  AuthResult r = a->check_head(head_of({{"X-API-Key", "k e Y"}}), kNow);
  CHECK_FALSE(r.ok);
  CHECK(r.reason == "X-API-Key header did not match");
  CHECK(r.www_authenticate.empty());
  r = a->check_head(head_of({{"X-API-Key", "k e"}}), kNow);
  CHECK(r.reason == "X-API-Key header did not match");
  r = a->check_head(head_of({{"X-API-Key", ""}}), kNow);
  CHECK(r.reason == "X-API-Key header did not match");
  r = a->check_head(head_of({}), kNow);
  CHECK(r.reason == "X-API-Key header missing");
  r = a->check_head(head_of({{"X-API-Key", "k e y"}, {"X-Api-Key", "k e y"}}), kNow);
  CHECK(r.reason == "X-API-Key header repeated");
  r = a->check_head(head_of({{"Authorization", "k e y"}}), kNow);
  CHECK(r.reason == "X-API-Key header missing");
}

namespace {

AuthConfig hmac_config(const std::string& algorithm, const std::string& encoding,
                       const std::string& prefix) {
  AuthConfig c;
  c.type = AuthType::Hmac;
  c.header = "X-Signature";
  c.secret = "hmac-secret";
  c.algorithm = algorithm;
  c.encoding = encoding;
  c.prefix = prefix;
  return c;
}

const std::string kBody =
    R"({"event":"order.created","id":12345,"items":[1,2,3],"note":"ünïcode"})";

}  // namespace

TEST_CASE("hmac: sha256/sha512, hex/base64, with and without prefix") {
  struct Variant {
    const char* algorithm;
    const EVP_MD* md;
    const char* encoding;
    const char* prefix;
  };
  const std::vector<Variant> variants = {
      {"sha256", EVP_sha256(), "hex", ""},       {"sha256", EVP_sha256(), "hex", "sha256="},
      {"sha256", EVP_sha256(), "base64", ""},    {"sha256", EVP_sha256(), "base64", "sha256="},
      {"sha512", EVP_sha512(), "hex", ""},       {"sha512", EVP_sha512(), "hex", "sha512="},
      {"sha512", EVP_sha512(), "base64", "v0:"}, {"sha512", EVP_sha512(), "base64", ""},
  };
  for (const Variant& v : variants) {
    CAPTURE(v.algorithm);
    CAPTURE(v.encoding);
    CAPTURE(v.prefix);
    const auto a = make(hmac_config(v.algorithm, v.encoding, v.prefix));
    CHECK(a->needs_body());
    CHECK(a->strip_names().empty());
    const std::string mac = hmac(v.md, "hmac-secret", kBody);
    const bool is_hex = std::string(v.encoding) == "hex";
    const std::string sig = std::string(v.prefix) + (is_hex ? hex(mac) : b64(mac));

    // Right signature: the head passes, the body passes, whole or in pieces of any size.
    CHECK(a->check_head(head_of({{"X-Signature", sig}}), kNow).ok);
    CHECK(a->check_body(head_of({{"x-signature", sig}}), whole(kBody), kNow).ok);
    for (size_t size : {1, 2, 3, 7, 64, 1000}) {
      CAPTURE(size);
      CHECK(a->check_body(head_of({{"X-Signature", sig}}), split(kBody, size), kNow).ok);
    }
    if (is_hex) {
      const std::string upper = std::string(v.prefix) + hex(mac, true);
      CHECK(a->check_body(head_of({{"X-Signature", upper}}), whole(kBody), kNow).ok);
    }

    // Altered body, wrong secret.
    std::string altered = kBody;
    altered[10] ^= 1;
    AuthResult r = a->check_body(head_of({{"X-Signature", sig}}), split(altered, 5), kNow);
    CHECK_FALSE(r.ok);
    CHECK(r.reason ==
          std::string("X-Signature did not match the HMAC-") + v.algorithm + " of the body");
    CHECK(r.www_authenticate.empty());
    CHECK_FALSE(a->check_body(head_of({{"X-Signature", sig}}), whole(kBody + " "), kNow).ok);
    CHECK_FALSE(a->check_body(head_of({{"X-Signature", sig}}), whole(""), kNow).ok);
    const std::string other = hmac(v.md, "hmac-secreT", kBody);
    const std::string wrong = std::string(v.prefix) + (is_hex ? hex(other) : b64(other));
    CHECK(a->check_head(head_of({{"X-Signature", wrong}}), kNow).ok);  // well-formed
    CHECK_FALSE(a->check_body(head_of({{"X-Signature", wrong}}), whole(kBody), kNow).ok);

    // Missing, repeated, prefix missing or different.
    r = a->check_head(head_of({}), kNow);
    CHECK(r.reason == "X-Signature header missing");
    r = a->check_body(head_of({{"X-Signature", sig}, {"X-Signature", sig}}), whole(kBody), kNow);
    CHECK(r.reason == "X-Signature header repeated");
    if (*v.prefix) {
      const std::string bare = is_hex ? hex(mac) : b64(mac);
      r = a->check_head(head_of({{"X-Signature", bare}}), kNow);
      CHECK_FALSE(r.ok);
      CHECK(r.reason == "X-Signature does not start with the configured prefix");
      CHECK_FALSE(a->check_body(head_of({{"X-Signature", bare}}), whole(kBody), kNow).ok);
      r = a->check_head(head_of({{"X-Signature", "other=" + bare}}), kNow);
      CHECK(r.reason == "X-Signature does not start with the configured prefix");
    }
    // Truncated, too long, the other encoding.
    r = a->check_head(head_of({{"X-Signature", sig.substr(0, sig.size() - 4)}}), kNow);
    CHECK_FALSE(r.ok);
    r = a->check_head(head_of({{"X-Signature", sig + "00"}}), kNow);
    CHECK_FALSE(r.ok);
    const std::string swapped = std::string(v.prefix) + (is_hex ? b64(mac) : hex(mac));
    r = a->check_head(head_of({{"X-Signature", swapped}}), kNow);
    CHECK_FALSE(r.ok);
    CHECK(r.reason.find(mac) == std::string::npos);
  }
}

TEST_CASE("hmac: reasons for malformed values; body read failure") {
  const auto a = make(hmac_config("sha256", "hex", "sha256="));
  AuthResult r = a->check_head(head_of({{"X-Signature", "sha256=zz"}}), kNow);
  CHECK(r.reason == "X-Signature is not hex");
  r = a->check_head(head_of({{"X-Signature", "sha256=abcd"}}), kNow);
  CHECK(r.reason == "X-Signature does not have the length of an HMAC-sha256");
  r = a->check_head(
      head_of({{"X-Signature", "SHA256=" + hex(hmac(EVP_sha256(), "hmac-secret", ""))}}), kNow);
  CHECK(r.reason == "X-Signature does not start with the configured prefix");
  r = a->check_body(
      head_of({{"X-Signature", "sha256=" + hex(hmac(EVP_sha256(), "hmac-secret", "par"))}}),
      FailingBody(), kNow);
  CHECK_FALSE(r.ok);
  CHECK(r.reason == "X-Signature not checked: the request body could not be read");

  const auto b = make(hmac_config("sha512", "base64", ""));
  const std::string mac = hmac(EVP_sha512(), "hmac-secret", kBody);
  std::string unpadded = b64(mac);
  while (unpadded.back() == '=') unpadded.pop_back();
  r = b->check_head(head_of({{"X-Signature", unpadded}}), kNow);
  CHECK(r.reason == "X-Signature is not base64");
  // An empty body has a MAC too.
  CHECK(b->check_body(head_of({{"X-Signature", b64(hmac(EVP_sha512(), "hmac-secret", ""))}}),
                      PiecesBody({}), kNow)
            .ok);
}

TEST_CASE("create: invalid hmac settings") {
  AuthConfig c = hmac_config("sha1", "hex", "");
  CHECK(create_error(c) == "hmac algorithm must be sha256 or sha512");
  c = hmac_config("sha256", "base32", "");
  CHECK(create_error(c) == "hmac encoding must be hex or base64");
}

// ---- Standard Webhooks -----------------------------------------------------------------------

namespace {

struct Pkey {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Pkey>;

// A temporary file removed at scope exit.
class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    char name[] = "/tmp/dechunkd-auth-test-XXXXXX";
    const int fd = mkstemp(name);
    REQUIRE(fd >= 0);
    path_ = name;
    REQUIRE(write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()));
    close(fd);
  }
  ~TempFile() { unlink(path_.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

PkeyPtr generate(const char* type) {
  PkeyPtr k(EVP_PKEY_Q_keygen(nullptr, nullptr, type));
  REQUIRE(k != nullptr);
  return k;
}

std::string public_pem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  REQUIRE(PEM_write_bio_PUBKEY(bio, key) == 1);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(n));
  BIO_free(bio);
  return pem;
}

std::string ed25519_sign(EVP_PKEY* key, const std::string& msg) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  REQUIRE(EVP_DigestSignInit(ctx, nullptr, nullptr, nullptr, key) == 1);
  unsigned char sig[64];
  size_t len = sizeof sig;
  REQUIRE(EVP_DigestSign(ctx, sig, &len, reinterpret_cast<const unsigned char*>(msg.data()),
                         msg.size()) == 1);
  EVP_MD_CTX_free(ctx);
  REQUIRE(len == 64);
  return std::string(reinterpret_cast<char*>(sig), len);
}

// A sender's v1 signature: HMAC-SHA256 keyed with the base64-decoded part after "whsec_".
std::string sign_v1(const std::string& whsec, const std::string& id, const std::string& ts,
                    const std::string& body) {
  std::string key;
  REQUIRE(auth_detail::base64_decode(whsec.substr(6), &key));
  return "v1," + b64(hmac(EVP_sha256(), key, id + "." + ts + "." + body));
}

std::string sign_v1a(EVP_PKEY* key, const std::string& id, const std::string& ts,
                     const std::string& body) {
  return "v1a," + b64(ed25519_sign(key, id + "." + ts + "." + body));
}

AuthConfig sw_config(std::vector<std::string> secrets, std::vector<std::string> keys = {}) {
  AuthConfig c;
  c.type = AuthType::StandardWebhooks;
  c.secrets = std::move(secrets);
  c.public_keys = std::move(keys);
  c.tolerance = Millis{5 * 60'000};
  return c;
}

const std::string kSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const std::string kSecret2 = "whsec_" + b64("another secret, 32 bytes long!!!");
const std::string kId = "msg_p5jXN8AQM9LWM0D4loKWxJek";

Fields sw_fields(const std::string& id, int64_t ts, const std::string& signature) {
  return {{"webhook-id", id},
          {"webhook-timestamp", std::to_string(ts)},
          {"webhook-signature", signature}};
}

}  // namespace

TEST_CASE("standard_webhooks: the spec's test vector") {
  const std::string payload = R"({"test": 2432232314})";
  const int64_t ts = 1614265330;
  const std::string expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
  // What a sender computes is the published value...
  CHECK(sign_v1(kSecret, kId, "1614265330", payload) == expected);
  // ...and the gateway accepts it, whole and in pieces.
  const auto a = make(sw_config({kSecret}));
  CHECK(a->needs_body());
  CHECK(a->strip_names().empty());
  const Head head(sw_fields(kId, ts, expected));
  CHECK(a->check_head(head, ts).ok);
  CHECK(a->check_body(head, whole(payload), ts).ok);
  CHECK(a->check_body(head, split(payload, 1), ts + 299).ok);
  CHECK(a->check_body(head, split(payload, 3), ts - 300).ok);

  // Altered body, another id or timestamp: the same signature no longer fits.
  AuthResult r = a->check_body(head, whole(R"({"test": 2432232315})"), ts);
  CHECK_FALSE(r.ok);
  CHECK(r.reason == "webhook-signature did not match any configured secret or key");
  CHECK(r.www_authenticate.empty());
  CHECK_FALSE(a->check_body(head_of(sw_fields(kId + "x", ts, expected)), whole(payload), ts).ok);
  CHECK_FALSE(a->check_body(head_of(sw_fields(kId, ts + 1, expected)), whole(payload), ts).ok);
  // Wrong secret.
  const auto b = make(sw_config({kSecret2}));
  CHECK_FALSE(b->check_body(head, whole(payload), ts).ok);
}

TEST_CASE("standard_webhooks: timestamps within the tolerance") {
  const auto a = make(sw_config({kSecret}));
  const std::string body = "{}";
  auto at = [&](int64_t ts, int64_t now) {
    const Head head(sw_fields(kId, ts, sign_v1(kSecret, kId, std::to_string(ts), body)));
    AuthResult h = a->check_head(head, now);
    AuthResult b = a->check_body(head, whole(body), now);
    CHECK(h.ok == b.ok);
    CHECK(h.reason == b.reason);
    return b;
  };
  CHECK(at(kNow, kNow).ok);
  CHECK(at(kNow - 300, kNow).ok);
  CHECK(at(kNow + 300, kNow).ok);
  AuthResult r = at(kNow - 301, kNow);
  CHECK_FALSE(r.ok);
  CHECK(r.reason == "webhook-timestamp is 301 s in the past, outside the 300 s tolerance");
  r = at(kNow - 912, kNow);
  CHECK(r.reason == "webhook-timestamp is 912 s in the past, outside the 300 s tolerance");
  r = at(kNow + 301, kNow);
  CHECK(r.reason == "webhook-timestamp is 301 s in the future, outside the 300 s tolerance");
  r = at(0, kNow);
  CHECK_FALSE(r.ok);

  AuthConfig c = sw_config({kSecret});
  c.tolerance = Millis{1500};
  const auto d = make(c);
  const Head head(sw_fields(kId, kNow - 2, sign_v1(kSecret, kId, std::to_string(kNow - 2), body)));
  r = d->check_head(head, kNow);
  CHECK(r.reason == "webhook-timestamp is 2 s in the past, outside the 1500 ms tolerance");
  CHECK(d->check_head(head, kNow - 1).ok);
}

TEST_CASE("standard_webhooks: several signatures, several secrets, unknown versions") {
  const std::string body = kBody;
  const std::string ts = std::to_string(kNow);
  const std::string good = sign_v1(kSecret, kId, ts, body);
  const std::string other = sign_v1(kSecret2, kId, ts, body);
  const std::string stale = sign_v1(kSecret, kId, ts, body + "x");

  const auto a = make(sw_config({kSecret}));
  for (const std::string& list :
       {stale + " " + good, good + " " + stale, other + " " + good + " " + stale, "v2,abcd " + good,
        "v1a,AAAA " + good, good + " v1,!!!!", "  " + good + "  ", "v1,Zm9v " + good}) {
    CAPTURE(list);
    const Head head(sw_fields(kId, kNow, list));
    CHECK(a->check_head(head, kNow).ok);
    CHECK(a->check_body(head, split(body, 4), kNow).ok);
  }
  for (const std::string& list : {stale, other, stale + " " + other}) {
    CAPTURE(list);
    const Head head(sw_fields(kId, kNow, list));
    CHECK(a->check_head(head, kNow).ok);
    CHECK_FALSE(a->check_body(head, whole(body), kNow).ok);
  }

  // Rotation: both secrets configured, a signature made with either passes.
  const auto rot = make(sw_config({kSecret2, kSecret}));
  CHECK(rot->check_body(head_of(sw_fields(kId, kNow, good)), split(body, 9), kNow).ok);
  CHECK(rot->check_body(head_of(sw_fields(kId, kNow, other)), split(body, 9), kNow).ok);
  CHECK(rot->check_body(head_of(sw_fields(kId, kNow, stale + " " + other)), whole(body), kNow).ok);
  CHECK_FALSE(rot->check_body(head_of(sw_fields(kId, kNow, stale)), whole(body), kNow).ok);

  // A body that cannot be read is not a pass.
  const AuthResult r = a->check_body(head_of(sw_fields(kId, kNow, good)), FailingBody(), kNow);
  CHECK_FALSE(r.ok);
  CHECK(r.reason == "webhook-signature not checked: the request body could not be read");
}

TEST_CASE("standard_webhooks: malformed headers are refused by check_head") {
  const auto a = make(sw_config({kSecret}));
  const std::string ts = std::to_string(kNow);
  const std::string sig = sign_v1(kSecret, kId, ts, "{}");
  struct Case {
    Fields fields;
    const char* reason;
  };
  const std::vector<Case> cases = {
      {{{"webhook-timestamp", ts}, {"webhook-signature", sig}}, "webhook-id header missing"},
      {{{"webhook-id", kId}, {"webhook-signature", sig}}, "webhook-timestamp header missing"},
      {{{"webhook-id", kId}, {"webhook-timestamp", ts}}, "webhook-signature header missing"},
      {{{"webhook-id", kId},
        {"webhook-id", kId},
        {"webhook-timestamp", ts},
        {"webhook-signature", sig}},
       "webhook-id header repeated"},
      {{{"webhook-id", kId},
        {"webhook-timestamp", ts},
        {"Webhook-Timestamp", ts},
        {"webhook-signature", sig}},
       "webhook-timestamp header repeated"},
      {{{"webhook-id", kId},
        {"webhook-timestamp", ts},
        {"webhook-signature", sig},
        {"WEBHOOK-SIGNATURE", sig}},
       "webhook-signature header repeated"},
      {{{"webhook-id", ""}, {"webhook-timestamp", ts}, {"webhook-signature", sig}},
       "webhook-id header is empty"},
      {{{"webhook-id", kId}, {"webhook-timestamp", ts}, {"webhook-signature", ""}},
       "webhook-signature header is empty"},
      {{{"webhook-id", kId}, {"webhook-timestamp", ts + ".0"}, {"webhook-signature", sig}},
       "webhook-timestamp is not a unix time in seconds"},
      {{{"webhook-id", kId}, {"webhook-timestamp", "-" + ts}, {"webhook-signature", sig}},
       "webhook-timestamp is not a unix time in seconds"},
      {{{"webhook-id", kId}, {"webhook-timestamp", "+" + ts}, {"webhook-signature", sig}},
       "webhook-timestamp is not a unix time in seconds"},
      {{{"webhook-id", kId},
        {"webhook-timestamp", "2023-11-14T22:13:20Z"},
        {"webhook-signature", sig}},
       "webhook-timestamp is not a unix time in seconds"},
      {{{"webhook-id", kId},
        {"webhook-timestamp", "99999999999999999999999"},
        {"webhook-signature", sig}},
       "webhook-timestamp is not a unix time in seconds"},
      {{{"webhook-id", kId}, {"webhook-timestamp", ts}, {"webhook-signature", sig.substr(3)}},
       "webhook-signature has no well-formed v1 or v1a signature"},
      {{{"webhook-id", kId},
        {"webhook-timestamp", ts},
        {"webhook-signature", "v1," + sig.substr(3, 40)}},
       "webhook-signature has no well-formed v1 or v1a signature"},
      {{{"webhook-id", kId},
        {"webhook-timestamp", ts},
        {"webhook-signature", "v2," + sig.substr(3)}},
       "webhook-signature has no well-formed v1 or v1a signature"},
      {{{"webhook-id", kId},
        {"webhook-timestamp", ts},
        {"webhook-signature", "V1," + sig.substr(3)}},
       "webhook-signature has no well-formed v1 or v1a signature"},
      {{{"webhook-id", kId},
        {"webhook-timestamp", ts},
        {"webhook-signature", "v1a," + sig.substr(3)}},
       "webhook-signature has no well-formed v1 or v1a signature"},
      {{{"webhook-id", kId},
        {"webhook-timestamp", ts},
        {"webhook-signature", "v1a," + b64(std::string(64, 'x'))}},
       "webhook-signature has no signature this route can check (v1 needs secrets, v1a needs "
       "public_keys)"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.reason);
    const Head head(c.fields);
    const AuthResult h = a->check_head(head, kNow);
    CHECK_FALSE(h.ok);
    CHECK(h.reason == c.reason);
    CHECK(h.www_authenticate.empty());
    CHECK(h.reason.find(sig.substr(3)) == std::string::npos);
    const AuthResult b = a->check_body(head, whole("{}"), kNow);
    CHECK_FALSE(b.ok);
    CHECK(b.reason == c.reason);
  }
  // Leading zeros are digits: accepted, and signed as received.
  const std::string padded = "0" + ts;
  CHECK(a->check_body(head_of({{"webhook-id", kId},
                               {"webhook-timestamp", padded},
                               {"webhook-signature", sign_v1(kSecret, kId, padded, "{}")}}),
                      whole("{}"), kNow)
            .ok);
}

TEST_CASE("standard_webhooks: v1a Ed25519 with PEM public keys") {
  const PkeyPtr key = generate("ED25519");
  const PkeyPtr next = generate("ED25519");
  const PkeyPtr stranger = generate("ED25519");
  const TempFile pem(public_pem(key.get()));
  const TempFile next_pem(public_pem(next.get()));
  const std::string ts = std::to_string(kNow);
  const std::string body = kBody;
  const std::string good = sign_v1a(key.get(), kId, ts, body);
  const std::string wrong_key = sign_v1a(stranger.get(), kId, ts, body);

  const auto a = make(sw_config({}, {pem.path()}));
  CHECK(a->needs_body());
  CHECK(a->check_head(head_of(sw_fields(kId, kNow, good)), kNow).ok);
  CHECK(a->check_body(head_of(sw_fields(kId, kNow, good)), whole(body), kNow).ok);
  for (size_t size : {1, 5, 64}) {
    CAPTURE(size);
    CHECK(a->check_body(head_of(sw_fields(kId, kNow, good)), split(body, size), kNow).ok);
  }
  CHECK(a->check_body(head_of(sw_fields(kId, kNow, wrong_key + " " + good)), whole(body), kNow).ok);
  AuthResult r = a->check_body(head_of(sw_fields(kId, kNow, wrong_key)), whole(body), kNow);
  CHECK_FALSE(r.ok);
  CHECK(r.reason == "webhook-signature did not match any configured secret or key");
  CHECK_FALSE(a->check_body(head_of(sw_fields(kId, kNow, good)), whole(body + "x"), kNow).ok);
  CHECK_FALSE(a->check_body(head_of(sw_fields(kId, kNow, good)), whole(""), kNow).ok);
  CHECK_FALSE(a->check_body(head_of(sw_fields(kId, kNow + 1, good)), whole(body), kNow).ok);
  r = a->check_body(head_of(sw_fields(kId, kNow, good)), FailingBody(), kNow);
  CHECK(r.reason == "webhook-signature not checked: the request body could not be read");
  // Only v1 signatures and no secrets: nothing this route can check.
  r = a->check_head(head_of(sw_fields(kId, kNow, sign_v1(kSecret, kId, ts, body))), kNow);
  CHECK_FALSE(r.ok);
  CHECK(r.reason ==
        "webhook-signature has no signature this route can check (v1 needs secrets, v1a needs "
        "public_keys)");

  // Key rotation, and keys beside secrets: any one valid signature passes.
  const auto both = make(sw_config({kSecret}, {next_pem.path(), pem.path()}));
  CHECK(both->check_body(head_of(sw_fields(kId, kNow, good)), split(body, 3), kNow).ok);
  CHECK(both->check_body(head_of(sw_fields(kId, kNow, sign_v1a(next.get(), kId, ts, body))),
                         whole(body), kNow)
            .ok);
  CHECK(both->check_body(head_of(sw_fields(kId, kNow, sign_v1(kSecret, kId, ts, body))),
                         whole(body), kNow)
            .ok);
  const std::string bad_v1 = sign_v1(kSecret2, kId, ts, body);
  CHECK(both->check_body(head_of(sw_fields(kId, kNow, bad_v1 + " " + good)), whole(body), kNow).ok);
  CHECK_FALSE(
      both->check_body(head_of(sw_fields(kId, kNow, bad_v1 + " " + wrong_key)), whole(body), kNow)
          .ok);
  // An empty body is signed too.
  CHECK(both->check_body(head_of(sw_fields(kId, kNow, sign_v1a(key.get(), kId, ts, ""))),
                         PiecesBody({}), kNow)
            .ok);

  // Past the signed-content budget a v1a check is not decided (busy: 503, retry), not refused.
  SignedContentBudget& budget = ed25519_content_budget();
  REQUIRE(budget.try_take(64ull << 20));  // as if another worker held a 64 MiB body
  r = a->check_body(head_of(sw_fields(kId, kNow, good)), whole(body), kNow);
  CHECK_FALSE(r.ok);
  CHECK(r.busy);
  // A v1 signature needs no budget (HMAC streams).
  CHECK(both->check_body(head_of(sw_fields(kId, kNow, sign_v1(kSecret, kId, ts, body))), whole(body), kNow).ok);
  budget.give_back(64ull << 20);
  CHECK(a->check_body(head_of(sw_fields(kId, kNow, good)), whole(body), kNow).ok);
  CHECK(budget.held() == 0);
}

TEST_CASE("standard_webhooks: a 1 MiB body in 16 KiB pieces, checked from several threads") {
  const PkeyPtr key = generate("ED25519");
  const TempFile pem(public_pem(key.get()));
  std::string body(1 << 20, '\0');
  for (size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>(i * 31 + (i >> 9));
  const std::string ts = std::to_string(kNow);
  const auto a = make(sw_config({kSecret2, kSecret}, {pem.path()}));
  const PiecesBody pieces = split(body, 16 * 1024);
  const Fields v1 = sw_fields(kId, kNow, sign_v1(kSecret, kId, ts, body));
  const Fields v1a = sw_fields(kId, kNow, sign_v1a(key.get(), kId, ts, body));
  std::string altered = body;
  altered[700'000] ^= 0x40;
  const PiecesBody altered_pieces = split(altered, 16 * 1024);
  // One const Authenticator shared by all threads, as the workers share it.
  std::vector<int> passes(4, 0), failures(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 3; ++i) {
        const Head h1(v1), h2(v1a);
        passes[t] += a->check_body(h1, pieces, kNow).ok;
        passes[t] += a->check_body(h2, pieces, kNow).ok;
        failures[t] += !a->check_body(h1, altered_pieces, kNow).ok;
        failures[t] += !a->check_body(h2, altered_pieces, kNow).ok;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < 4; ++t) {
    CHECK(passes[t] == 6);
    CHECK(failures[t] == 6);
  }
}

TEST_CASE("create: standard_webhooks key and secret errors name the problem") {
  SUBCASE("missing file") {
    const std::string e = create_error(sw_config({}, {"/nonexistent/epilot-org.pem"}));
    CHECK(e == "public key /nonexistent/epilot-org.pem: cannot be read: No such file or directory");
  }
  SUBCASE("not PEM") {
    const TempFile f("hello\n");
    CHECK(create_error(sw_config({}, {f.path()})) ==
          "public key " + f.path() +
              ": no PEM public key (-----BEGIN PUBLIC KEY-----) could be read");
  }
  SUBCASE("an EC key") {
    PkeyPtr ec(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    REQUIRE(ec != nullptr);
    const TempFile f(public_pem(ec.get()));
    CHECK(create_error(sw_config({kSecret}, {f.path()})) ==
          "public key " + f.path() + ": is EC, not an Ed25519 public key");
  }
  SUBCASE("an X25519 key") {
    const PkeyPtr x = generate("X25519");
    const TempFile f(public_pem(x.get()));
    CHECK(create_error(sw_config({}, {f.path()})) ==
          "public key " + f.path() + ": is X25519, not an Ed25519 public key");
  }
  SUBCASE("a private key file") {
    const PkeyPtr k = generate("ED25519");
    BIO* bio = BIO_new(BIO_s_mem());
    REQUIRE(PEM_write_bio_PrivateKey(bio, k.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1);
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    const TempFile f(std::string(data, static_cast<size_t>(n)));
    BIO_free(bio);
    CHECK(create_error(sw_config({}, {f.path()})) ==
          "public key " + f.path() +
              ": no PEM public key (-----BEGIN PUBLIC KEY-----) could be read");
  }
  SUBCASE("bad secrets; the message never repeats them") {
    for (const std::string& s :
         {std::string("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
          std::string("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS"), std::string("whsec_"),
          std::string("whsec_MfKQ-r8G"), std::string("WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")}) {
      CAPTURE(s);
      const std::string e = create_error(sw_config({kSecret, s}));
      CHECK(e == "standard_webhooks secret 2 of 2 is not 'whsec_' followed by standard base64");
    }
  }
  SUBCASE("neither secrets nor keys") {
    CHECK(create_error(sw_config({})) ==
          "standard_webhooks needs 'secrets' or 'public_keys' (or both)");
  }
  SUBCASE("a null error pointer is allowed") {
    CHECK(Authenticator::create(sw_config({}, {"/nonexistent"}), nullptr) == nullptr);
  }
}

TEST_CASE("auth: the Ed25519 signed-content budget lets one body of any size go, more only within the limit") {
  SignedContentBudget budget(100);
  CHECK(budget.try_take(1000));  // nothing held: one body of any size
  CHECK_FALSE(budget.try_take(1));
  budget.give_back(1000);
  CHECK(budget.held() == 0);
  CHECK(budget.try_take(60));
  CHECK(budget.try_take(40));  // exactly the limit
  CHECK_FALSE(budget.try_take(1));
  budget.give_back(40);
  CHECK_FALSE(budget.try_take(41));
  CHECK(budget.try_take(40));
  budget.give_back(40);
  budget.give_back(60);
  CHECK(budget.held() == 0);
  CHECK(ed25519_content_budget().held() == 0);  // nothing leaks from the checks above this case
}
