// Operator log on stderr (systemd captures it): one line per event, "<time> <level> <message>",
// or "<N>message" when stderr is the journal (JOURNAL_STREAM set). Thread-safe; never logs
// secrets: callers pass target URLs through Url::redacted().
#pragma once
#include <atomic>
#include <string>
#include <string_view>

#include "config/config.hpp"

namespace dechunkd {

class StringWriter;

class Log {
 public:
  static void set_level(LogLevel level) { level_.store(level, std::memory_order_relaxed); }
  static bool enabled(LogLevel level) { return level <= level_.load(std::memory_order_relaxed); }
  static void write(LogLevel level, std::string_view message);
  // Called once at start: detects whether stderr is the journal.
  static void init_from_environment();

 private:
  static std::atomic<LogLevel> level_;
};

inline void log_error(std::string_view m) { Log::write(LogLevel::Error, m); }
inline void log_warn(std::string_view m) { if (Log::enabled(LogLevel::Warn)) Log::write(LogLevel::Warn, m); }
inline void log_info(std::string_view m) { if (Log::enabled(LogLevel::Info)) Log::write(LogLevel::Info, m); }
inline void log_debug(std::string_view m) { if (Log::enabled(LogLevel::Debug)) Log::write(LogLevel::Debug, m); }

// "2026-12-04T21:23:59.123Z" for the given wall-clock time in milliseconds since the epoch.
std::string format_rfc3339_ms(int64_t unix_ms);
// The same, appended to out (the access log's buffer: no string per line).
void append_rfc3339_ms(StringWriter& out, int64_t unix_ms);
int64_t wall_clock_ms();

}  // namespace dechunkd
