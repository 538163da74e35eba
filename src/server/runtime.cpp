#include "server/runtime.hpp"

#include <openssl/asn1.h>
#include <openssl/x509.h>

#include "log/log.hpp"
#include "net/tls_context.hpp"

namespace dechunkd {

namespace {
constexpr int kCertificateWarnDays = 14;

// A listener certificate that has expired, or soon will, makes senders refuse the connection:
// said at start and at every reload, while there is time to renew it.
void warn_certificate_expiry(const std::string& address, const std::string& path, SSL_CTX* ctx) {
  X509* cert = SSL_CTX_get0_certificate(ctx);
  int days = 0;
  int secs = 0;
  if (!cert || ASN1_TIME_diff(&days, &secs, nullptr, X509_get0_notAfter(cert)) != 1) return;
  if (days < 0 || secs < 0) {
    log_warn("listener " + address + ": the certificate " + path + " expired " + std::to_string(-days) +
             " day(s) ago; senders refuse it: renew it and reload (SIGHUP)");
  } else if (days < kCertificateWarnDays) {
    log_warn("listener " + address + ": the certificate " + path + " expires in " + std::to_string(days) +
             " day(s); renew it and reload (SIGHUP)");
  }
}
}  // namespace

Runtime::Runtime(std::shared_ptr<const Config> c)
    : config(std::move(c)), router(*config),
      head_limits{config->limits.max_header_size, config->limits.max_headers, config->limits.max_uri_size} {}

std::string listen_key(const Config& config, size_t index) {
  size_t ordinal = 0;
  for (size_t j = 0; j < index; ++j) {
    if (config.listen[j].address == config.listen[index].address) ++ordinal;
  }
  return config.listen[index].address + "#" + std::to_string(ordinal);
}

std::shared_ptr<const Runtime> Runtime::create(std::shared_ptr<const Config> config, std::string* error) {
  auto rt = std::make_shared<Runtime>(std::move(config));
  for (size_t i = 0; i < rt->config->listen.size(); ++i) {
    const ListenConfig& l = rt->config->listen[i];
    rt->listen_[listen_key(*rt->config, i)] = &l;
    if (!l.tls) continue;
    SslCtxPtr ctx = make_server_ctx(*l.tls, error);
    if (!ctx) {
      *error = "listener " + l.address + ": " + *error;
      return nullptr;
    }
    warn_certificate_expiry(l.address, l.tls->certificate, ctx.get());
    rt->server_ctx_[listen_key(*rt->config, i)] = std::move(ctx);
  }
  for (const RouteConfig& r : rt->config->routes) {
    if (r.auth) {
      auto a = Authenticator::create(*r.auth, error);
      if (!a) {
        *error = "route " + r.name + ": auth: " + *error;
        return nullptr;
      }
      rt->auth_[&r] = std::move(a);
    }
    for (const TargetConfig& t : r.targets) {
      TargetInfo& info = rt->targets_[&t];
      info.label = t.url.redacted();
      // Connections are shared only between targets that would open the very same one.
      info.pool_key = (t.url.tls ? "https://" : "http://") + t.url.host + ":" + std::to_string(t.url.port);
      if (t.proxy) info.pool_key += " via " + t.proxy->host + ":" + std::to_string(t.proxy->port);
      if (t.url.tls) {
        info.pool_key += " sni=" + t.tls.server_name + " verify=" + (t.tls.verify ? "1" : "0") +
                         " ca=" + t.tls.ca_file + " cert=" + t.tls.client_certificate;
      }
      if (!t.url.tls) continue;
      SslCtxPtr ctx = make_client_ctx(t.tls, error);
      if (!ctx) {
        *error = "route " + r.name + " target " + t.url.redacted() + ": " + *error;
        return nullptr;
      }
      if (!t.tls.verify) {
        log_warn("route=" + r.name + " target=" + t.url.redacted() +
                 ": tls.verify is false: the target's certificate is NOT checked (anyone on the path can impersonate it)");
      }
      rt->client_ctx_[&t] = std::move(ctx);
    }
  }
  return rt;
}

SSL_CTX* Runtime::server_ctx(const std::string& key) const {
  auto it = server_ctx_.find(key);
  return it == server_ctx_.end() ? nullptr : it->second.get();
}

const Authenticator* Runtime::authenticator(const RouteConfig& route) const {
  auto it = auth_.find(&route);
  return it == auth_.end() ? nullptr : it->second.get();
}

SSL_CTX* Runtime::client_ctx(const TargetConfig& target) const {
  auto it = client_ctx_.find(&target);
  return it == client_ctx_.end() ? nullptr : it->second.get();
}

}  // namespace dechunkd
