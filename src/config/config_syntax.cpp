// The small grammars of config values: URLs, host:port, tokens, header values (SPEC 3).
#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "config/config_detail.hpp"

namespace dechunkd::config_detail {
namespace {

bool is_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool pton(int family, std::string_view text, void* out) {
  char buf[INET6_ADDRSTRLEN + 1];
  if (text.empty() || text.size() > INET6_ADDRSTRLEN) return false;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  return inet_pton(family, buf, out) == 1;
}

// Characters RFC 3986 allows in a path or query (plus '[' and ']', which receivers accept in
// queries such as "a[]=1"); '%' must start a %XX escape.
std::optional<std::string> check_uri_chars(std::string_view s, const char* part) {
  static constexpr std::string_view kAllowed = "-._~:/?[]@!$&'()*+,;=";
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (is_alnum(c) || kAllowed.find(c) != std::string_view::npos) continue;
    if (c == '%') {
      if (i + 2 < s.size() && is_hex(s[i + 1]) && is_hex(s[i + 2])) {
        i += 2;
        continue;
      }
      return std::string("invalid percent-escape in the URL ") + part;
    }
    return std::string("the URL ") + part + " contains a character that must be percent-encoded";
  }
  return std::nullopt;
}

std::optional<std::string> parse_port(std::string_view text, uint16_t& port) {
  if (text.empty() || text.size() > 5) return std::string("invalid port (expected 0-65535)");
  unsigned value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::string("invalid port (expected 0-65535)");
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value > 65535) return std::string("invalid port (expected 0-65535)");
  port = static_cast<uint16_t>(value);
  return std::nullopt;
}

// Splits "host:port" / "[v6]:port" / "host" / "[v6]". host_out keeps no brackets; port_text is
// empty when there is no ':'. had_colon tells "host:" (empty port) apart from "host".
std::optional<std::string> split_authority(std::string_view a, std::string& host_out,
                                           std::string_view& port_text, bool& had_colon) {
  had_colon = false;
  port_text = {};
  if (!a.empty() && a.front() == '[') {
    const size_t close = a.find(']');
    if (close == std::string_view::npos) return std::string("missing ']' after an IPv6 address");
    const std::string_view inner = a.substr(1, close - 1);
    in6_addr tmp;
    if (!pton(AF_INET6, inner, &tmp)) return std::string("invalid IPv6 address in brackets");
    host_out.assign(inner);
    const std::string_view rest = a.substr(close + 1);
    if (rest.empty()) return std::nullopt;
    if (rest.front() != ':') return std::string("unexpected text after ']'");
    had_colon = true;
    port_text = rest.substr(1);
    return std::nullopt;
  }
  const size_t colon = a.find(':');
  if (colon != std::string_view::npos && a.find(':', colon + 1) != std::string_view::npos) {
    return std::string("IPv6 addresses must be written in brackets, e.g. [::1]:8080");
  }
  const std::string_view host = a.substr(0, colon);
  if (host.empty()) return std::string("missing host");
  if (!valid_host(host, false)) return std::string("invalid host name or address");
  host_out.assign(host);
  if (colon != std::string_view::npos) {
    had_colon = true;
    port_text = a.substr(colon + 1);
  }
  return std::nullopt;
}

}  // namespace

std::string to_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

bool valid_host(std::string_view host, bool allow_brackets) {
  if (host.empty()) return false;
  if (host.front() == '[') {
    if (!allow_brackets || host.size() < 3 || host.back() != ']') return false;
    in6_addr tmp;
    return pton(AF_INET6, host.substr(1, host.size() - 2), &tmp);
  }
  const bool numeric = std::all_of(host.begin(), host.end(),
                                   [](char c) { return (c >= '0' && c <= '9') || c == '.'; });
  if (numeric) {
    in_addr tmp;
    return pton(AF_INET, host, &tmp);
  }
  if (host.size() > 253) return false;
  size_t label = 0;
  for (char c : host) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    if (!is_alnum(c) && c != '-' && c != '_') return false;
    if (++label > 63) return false;
  }
  return label != 0;
}

bool is_loopback_host(std::string_view host) {
  if (iequals(host, "localhost")) return true;
  in_addr v4;
  if (pton(AF_INET, host, &v4)) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6;
  if (pton(AF_INET6, host, &v6)) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

std::optional<std::string> parse_host_port(std::string_view text, std::string& host,
                                           uint16_t& port) {
  std::string h;
  std::string_view port_text;
  bool had_colon = false;
  if (auto err = split_authority(text, h, port_text, had_colon)) return err;
  if (!had_colon) return std::string("missing ':PORT' (write host:port, e.g. 127.0.0.1:8080)");
  uint16_t p = 0;
  if (auto err = parse_port(port_text, p)) return err;
  host = std::move(h);
  port = p;
  return std::nullopt;
}

std::optional<std::string> parse_url(std::string_view text, Url& out) {
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) {
      return std::string("the URL contains a space, control or non-ASCII character");
    }
  }
  const size_t sep = text.find("://");
  const std::string scheme = sep == std::string_view::npos ? "" : to_lower(text.substr(0, sep));
  if (scheme != "http" && scheme != "https") {
    return std::string("the URL must start with http:// or https://");
  }
  const std::string_view rest = text.substr(sep + 3);
  if (rest.find('#') != std::string_view::npos) {
    return std::string("the URL must not contain a fragment ('#...')");
  }
  const size_t auth_end = rest.find_first_of("/?");
  const std::string_view authority = rest.substr(0, auth_end);
  if (authority.find('@') != std::string_view::npos) {
    return std::string("the URL must not contain user info ('user:password@')");
  }
  if (authority.empty()) return std::string("the URL has no host");
  Url u;
  u.text.assign(text);
  u.tls = scheme == "https";
  std::string_view port_text;
  bool had_colon = false;
  if (auto err = split_authority(authority, u.host, port_text, had_colon)) {
    return "the URL's authority is invalid: " + *err;
  }
  u.port = u.tls ? 443 : 80;
  if (had_colon) {
    if (auto err = parse_port(port_text, u.port)) return "the URL has an " + *err;
    if (u.port == 0) return std::string("the URL's port must not be 0");
  }
  u.authority.assign(authority);
  const std::string_view path_query =
      auth_end == std::string_view::npos ? std::string_view{} : rest.substr(auth_end);
  const size_t q = path_query.find('?');
  const std::string_view path = path_query.substr(0, q);
  if (auto err = check_uri_chars(path, "path")) return err;
  u.path = path.empty() ? "/" : std::string(path);
  if (q != std::string_view::npos) {
    const std::string_view query = path_query.substr(q + 1);
    if (auto err = check_uri_chars(query, "query")) return err;
    u.query.assign(query);
  }
  out = std::move(u);
  return std::nullopt;
}

bool is_token(std::string_view s) {
  static constexpr std::string_view kExtra = "!#$%&'*+-.^_`|~";
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return is_alnum(c) || kExtra.find(c) != std::string_view::npos;
  });
}

bool is_field_value(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u == '\t' || (u >= 0x20 && u != 0x7f);
  });
}

bool is_base64(std::string_view s) {
  if (s.empty() || s.size() % 4 != 0) return false;
  size_t pad = 0;
  while (pad < 2 && !s.empty() && s[s.size() - 1 - pad] == '=') ++pad;
  for (size_t i = 0; i + pad < s.size(); ++i) {
    const char c = s[i];
    if (!is_alnum(c) && c != '+' && c != '/') return false;
  }
  return s.size() - pad > 1;  // at least one decoded byte
}

size_t edit_distance(std::string_view a, std::string_view b) {
  // Optimal string alignment: Levenshtein plus adjacent transpositions.
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1, 0));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[n][m];
}

}  // namespace dechunkd::config_detail
