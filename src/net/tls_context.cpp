#include "net/tls_context.hpp"

#include <openssl/err.h>

namespace dechunkd {

namespace {
std::string openssl_reason() {
  unsigned long e = ERR_get_error();
  std::string out;
  char buf[256];
  if (e != 0) {
    ERR_error_string_n(e, buf, sizeof buf);
    out = buf;
  }
  ERR_clear_error();
  return out.empty() ? "unknown OpenSSL error" : out;
}

// dechunkd runs unattended (and reloads on SIGHUP): it never prompts for a key's passphrase.
int refuse_passphrase(char*, int, int, void* asked) {
  *static_cast<bool*>(asked) = true;
  return 0;
}

bool load_private_key(SSL_CTX* ctx, const std::string& path, const char* what, std::string* error) {
  bool asked = false;
  SSL_CTX_set_default_passwd_cb(ctx, refuse_passphrase);
  SSL_CTX_set_default_passwd_cb_userdata(ctx, &asked);
  const bool ok = SSL_CTX_use_PrivateKey_file(ctx, path.c_str(), SSL_FILETYPE_PEM) == 1;
  SSL_CTX_set_default_passwd_cb_userdata(ctx, nullptr);
  if (ok) return true;
  if (asked) {
    ERR_clear_error();
    *error = std::string("cannot load the ") + what + " " + path +
             ": it is encrypted with a passphrase, which dechunkd cannot ask for; store it unencrypted "
             "(openssl pkey -in KEY -out NEW_KEY) and readable only by root and the dechunkd group";
    return false;
  }
  *error = std::string("cannot load the ") + what + " " + path + ": " + openssl_reason();
  return false;
}

void harden(SSL_CTX* ctx) {
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
}
}  // namespace

SslCtxPtr make_server_ctx(const TlsListenConfig& tls, std::string* error, TlsFile* failed) {
  TlsFile ignored;
  if (!failed) failed = &ignored;
  *failed = TlsFile::Other;
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) {
    *error = "cannot create a TLS context: " + openssl_reason();
    return nullptr;
  }
  harden(ctx.get());
  SSL_CTX_set_min_proto_version(ctx.get(), tls.min_version == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), tls.certificate.c_str()) != 1) {
    *failed = TlsFile::Certificate;
    *error = "cannot load the certificate chain " + tls.certificate + ": " + openssl_reason();
    return nullptr;
  }
  *failed = TlsFile::PrivateKey;  // the key, or a key that does not match the certificate
  if (!load_private_key(ctx.get(), tls.private_key, "private key", error)) return nullptr;
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    *error = "the private key " + tls.private_key + " does not match the certificate " + tls.certificate;
    ERR_clear_error();
    return nullptr;
  }
  *failed = TlsFile::Other;
  // Session tickets let a sender that reconnects skip the full handshake.
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_SERVER);
  return ctx;
}

bool private_key_loads(const std::string& path, const char* what, std::string* error) {
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_method()));
  if (!ctx) {
    *error = "cannot create a TLS context: " + openssl_reason();
    return false;
  }
  return load_private_key(ctx.get(), path, what, error);
}

SslCtxPtr make_client_ctx(const TargetTls& tls, std::string* error, TlsFile* failed) {
  TlsFile ignored;
  if (!failed) failed = &ignored;
  *failed = TlsFile::Other;
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) {
    *error = "cannot create a TLS context: " + openssl_reason();
    return nullptr;
  }
  harden(ctx.get());
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  if (tls.verify) {
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    if (SSL_CTX_set_default_verify_paths(ctx.get()) != 1) ERR_clear_error();  // no system store: CA file only
    if (!tls.ca_file.empty() && SSL_CTX_load_verify_locations(ctx.get(), tls.ca_file.c_str(), nullptr) != 1) {
      *failed = TlsFile::CaFile;
      *error = "cannot load the CA file " + tls.ca_file + ": " + openssl_reason();
      return nullptr;
    }
  } else {
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  }
  if (!tls.client_certificate.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), tls.client_certificate.c_str()) != 1) {
      *failed = TlsFile::Certificate;
      *error = "cannot load the client certificate " + tls.client_certificate + ": " + openssl_reason();
      return nullptr;
    }
    *failed = TlsFile::PrivateKey;
    if (!load_private_key(ctx.get(), tls.client_private_key, "client private key", error)) return nullptr;
    if (SSL_CTX_check_private_key(ctx.get()) != 1) {
      *error = "the client private key " + tls.client_private_key + " does not match " + tls.client_certificate;
      ERR_clear_error();
      return nullptr;
    }
  }
  *failed = TlsFile::Other;
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  return ctx;
}

}  // namespace dechunkd
