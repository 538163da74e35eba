// systemd readiness (sd_notify protocol, Type=notify): a datagram to $NOTIFY_SOCKET. A few
// lines instead of libsystemd; does nothing when the variable is unset.
#pragma once
#include <string_view>

namespace dechunkd {

// Sends e.g. "READY=1" or "STOPPING=1". Returns false when NOTIFY_SOCKET is set but the
// message could not be sent.
bool sd_notify_message(std::string_view message);

}  // namespace dechunkd
