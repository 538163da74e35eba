// Size and duration grammar (SPEC 3). Strict on purpose: no spaces, signs, fractions, or
// case-folded units, so "10mib" or "1.5s" in a config is an error rather than a guess.
#include "core/units.hpp"

#include <array>
#include <limits>

namespace dechunkd {
namespace {

struct Unit {
  std::string_view name;
  uint64_t factor;
};

// Order matters for format_size: on a tie the earlier (binary) unit wins.
constexpr std::array<Unit, 6> kSizeUnits{{
    {"GiB", 1024ULL * 1024 * 1024},
    {"MiB", 1024ULL * 1024},
    {"KiB", 1024ULL},
    {"GB", 1000ULL * 1000 * 1000},
    {"MB", 1000ULL * 1000},
    {"KB", 1000ULL},
}};

// Largest first: format_duration picks the first unit that divides exactly.
constexpr std::array<Unit, 4> kDurationUnits{{
    {"h", 3600ULL * 1000},
    {"m", 60ULL * 1000},
    {"s", 1000ULL},
    {"ms", 1ULL},
}};

// Splits "123abc" into the leading decimal digits and the rest. nullopt when there are no
// digits or the number does not fit 64 bits.
std::optional<uint64_t> leading_integer(std::string_view text, std::string_view& rest) {
  uint64_t value = 0;
  size_t i = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    const uint64_t digit = static_cast<uint64_t>(text[i] - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  if (i == 0) return std::nullopt;
  rest = text.substr(i);
  return value;
}

}  // namespace

std::optional<uint64_t> parse_size(std::string_view text) {
  std::string_view rest;
  const auto value = leading_integer(text, rest);
  if (!value) return std::nullopt;
  if (rest.empty()) return value;
  for (const Unit& u : kSizeUnits) {
    if (rest != u.name) continue;
    if (*value > std::numeric_limits<uint64_t>::max() / u.factor) return std::nullopt;
    return *value * u.factor;
  }
  return std::nullopt;
}

std::optional<Millis> parse_duration(std::string_view text) {
  std::string_view rest;
  const auto value = leading_integer(text, rest);
  if (!value) return std::nullopt;
  // Millis::rep is a signed 64-bit integer: the product must stay below its maximum.
  const auto max_ms = static_cast<uint64_t>(std::numeric_limits<Millis::rep>::max());
  for (const Unit& u : kDurationUnits) {
    if (rest != u.name) continue;
    if (*value > max_ms / u.factor) return std::nullopt;
    return Millis{static_cast<Millis::rep>(*value * u.factor)};
  }
  return std::nullopt;
}

std::string format_size(uint64_t bytes) {
  // Shortest exact spelling; on a tie a unit beats plain digits and a binary unit beats a
  // decimal one (kSizeUnits order), so 1024 is "1KiB" and 1000000 is "1MB".
  std::string best;
  if (bytes != 0) {
    for (const Unit& u : kSizeUnits) {
      if (bytes % u.factor != 0) continue;
      std::string candidate = std::to_string(bytes / u.factor);
      candidate += u.name;
      if (best.empty() || candidate.size() < best.size()) best = std::move(candidate);
    }
  }
  std::string plain = std::to_string(bytes);
  if (best.empty() || plain.size() < best.size()) best = std::move(plain);
  return best;
}

std::string format_duration(Millis d) {
  const auto ms = d.count();
  if (ms == 0) return "0s";
  if (ms < 0) return std::to_string(ms) + "ms";  // never parsed back; only for logs
  for (const Unit& u : kDurationUnits) {
    const auto factor = static_cast<Millis::rep>(u.factor);
    if (ms % factor == 0) return std::to_string(ms / factor) + std::string(u.name);
  }
  return std::to_string(ms) + "ms";  // unreachable: "ms" divides everything
}

}  // namespace dechunkd
