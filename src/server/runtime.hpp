// One loaded configuration and everything derived from it: the router, the head limits and the
// TLS contexts. Workers and in-flight requests hold a shared_ptr<const Runtime>: a reload swaps
// the pointer, requests finish under the one they started with (SPEC 2).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

#include "auth/auth.hpp"
#include "config/config.hpp"
#include "http/request_head.hpp"
#include "net/transport.hpp"
#include "router/router.hpp"

namespace dechunkd {

// Identifies a listen entry across a reload: its address as written, plus which occurrence of
// that address it is ("127.0.0.1:0" may be written several times: several ephemeral ports).
std::string listen_key(const Config& config, size_t index);

class Runtime {
 public:
  // Builds the TLS contexts (certificates are read again: a reload picks up renewed ones).
  // nullptr with *error when one cannot be built.
  static std::shared_ptr<const Runtime> create(std::shared_ptr<const Config> config, std::string* error);

  std::shared_ptr<const Config> config;
  Router router;
  HeadLimits head_limits;

  // The listen entry for a listen_key(), or nullptr (removed by a reload).
  const ListenConfig* listen_config(const std::string& key) const {
    auto it = listen_.find(key);
    return it == listen_.end() ? nullptr : it->second;
  }
  // The listener's context, or nullptr for plain HTTP; by listen_key().
  SSL_CTX* server_ctx(const std::string& key) const;
  // The target's context, or nullptr for http:// targets.
  SSL_CTX* client_ctx(const TargetConfig& target) const;
  // The route's inbound authentication, or nullptr when it has none.
  const Authenticator* authenticator(const RouteConfig& route) const;
  // Per target, computed once: the URL without query (log lines, metric labels) and the key of
  // the connections that can serve it (scheme, host, port, proxy, TLS settings).
  const std::string& target_label(const TargetConfig& target) const { return targets_.at(&target).label; }
  const std::string& pool_key(const TargetConfig& target) const { return targets_.at(&target).pool_key; }

  explicit Runtime(std::shared_ptr<const Config> c);

 private:
  std::map<std::string, SslCtxPtr> server_ctx_;
  std::map<std::string, const ListenConfig*> listen_;
  std::unordered_map<const TargetConfig*, SslCtxPtr> client_ctx_;
  std::unordered_map<const RouteConfig*, std::unique_ptr<Authenticator>> auth_;
  struct TargetInfo {
    std::string label;
    std::string pool_key;
  };
  std::unordered_map<const TargetConfig*, TargetInfo> targets_;
};

}  // namespace dechunkd
