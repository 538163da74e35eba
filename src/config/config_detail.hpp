// Private to the config loader: the small grammars a config value can have (URLs, host:port,
// header tokens) and ${env:...}/${file:...} expansion. Pure functions, so tests can call them.
// Errors come back as a message; the loader adds the FILE:LINE:COL.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "config/config.hpp"

namespace dechunkd::config_detail {

// The largest file ${file:...} or admin.token_file may name: these hold secrets and URLs, and
// a cap keeps a mistaken `${file:/dev/zero}` from eating memory.
constexpr size_t kMaxSecretFile = 1 * kMiB;

// Expands ${env:NAME} and ${file:PATH} into `out`; "$${" writes a literal "${". Expanded text is
// not expanded again. Returns an error message, or nullopt on success.
std::optional<std::string> expand(std::string_view in, std::string& out);

// Reads a whole (small) file and trims one trailing "\n" or "\r\n".
std::optional<std::string> read_secret_file(const std::string& path, std::string& out);

// "http://host[:port][/path][?query]" (or https). The message never repeats the URL: it may
// hold a secret (a Power Automate sig=).
std::optional<std::string> parse_url(std::string_view text, Url& out);

// "host:port" with IPv6 in brackets; port 0..65535. host comes back without brackets.
std::optional<std::string> parse_host_port(std::string_view text, std::string& host,
                                           uint16_t& port);

// A DNS name (letters, digits, '-', '_', '.'), a dotted IPv4 address, or (when brackets are
// allowed) "[IPv6]".
bool valid_host(std::string_view host, bool allow_brackets);

// localhost, 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104 (host without brackets).
bool is_loopback_host(std::string_view host);

// RFC 9110 token (header names, methods).
bool is_token(std::string_view s);

// A header value: no CR, LF, NUL or other control characters except HTAB.
bool is_field_value(std::string_view s);

// Standard base64 (with padding) that decodes to at least one byte.
bool is_base64(std::string_view s);

// Optimal-string-alignment distance (a transposition counts as one edit).
size_t edit_distance(std::string_view a, std::string_view b);

// ASCII lower case.
std::string to_lower(std::string_view s);
bool iequals(std::string_view a, std::string_view b);

}  // namespace dechunkd::config_detail
