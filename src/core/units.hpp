// Size and duration grammar of the configuration (SPEC 3): "512KiB", "10MB", "250ms", "2h".
// Pure functions, shared by the config loader and its tests and fuzzers.
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dechunkd {

using Millis = std::chrono::milliseconds;

// A non-negative integer, or an integer immediately followed by KiB MiB GiB KB MB GB
// (case-sensitive). nullopt on any other input or on overflow of 64 bits.
std::optional<uint64_t> parse_size(std::string_view text);

// An integer followed by ms, s, m or h. nullopt on any other input or on overflow.
std::optional<Millis> parse_duration(std::string_view text);

// "10MiB", "1500ms", "30s": the shortest exact spelling, for logs and docs.
std::string format_size(uint64_t bytes);
std::string format_duration(Millis d);

}  // namespace dechunkd
