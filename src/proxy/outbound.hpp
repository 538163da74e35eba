// What a target receives (SPEC 4 "Outbound request", SPEC 11 "Routing and headers"): the
// request-target mapping and the exact header block, built once into a string. Echo mode uses
// the same builder, so echo shows exactly what a target would get.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "http/request_head.hpp"

namespace dechunkd {

// Target path (+ remainder for prefix routes) + target query (+ '&' + request query).
// remainder is RouteMatch::remainder (ignored for exact routes).
std::string map_request_target(const RouteConfig& route, const Url& target,
                               std::string_view remainder, std::string_view request_query);

struct OutboundInput {
  const RequestHead* head = nullptr;
  const RouteConfig* route = nullptr;
  const TargetConfig* target = nullptr;   // null in echo mode: Host stays the received one
  std::string_view request_target;        // what goes on the request line
  std::string_view client_addr;           // appended to X-Forwarded-For (no port)
  bool inbound_tls = false;               // X-Forwarded-Proto https
  std::string_view request_id;            // the id used for this request
  bool request_id_generated = false;      // true: append X-Request-Id (sender sent none)
  const std::vector<HeaderField>* trailers = nullptr;  // merged when route->trailers == Merge
  uint64_t body_length = 0;
  std::vector<std::string_view> strip_names;  // credentials checked by auth: removed (SPEC 7)
};

// Appends "METHOD target HTTP/1.1\r\n" + fields + "\r\n" to out. Content-Length is always sent
// for a framed body, and for an unframed POST/PUT/PATCH as 0 (SPEC 4).
void build_outbound_head(const OutboundInput& in, std::string& out);

// Hop-by-hop per SPEC 4: Connection, Keep-Alive, Proxy-Connection, TE, Trailer,
// Transfer-Encoding, Upgrade, Expect, Content-Length (plus the tokens listed in Connection,
// which the caller passes in connection_tokens).
bool is_hop_by_hop(std::string_view name);

// Trailer fields that `trailers: merge` never merges (SPEC 11).
bool trailer_mergeable(std::string_view name, const RouteConfig& route);

}  // namespace dechunkd
