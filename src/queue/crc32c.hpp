// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of the queue log's
// segment headers and records (docs/queue-format.md). SSE4.2 when the CPU has it, else
// slicing-by-8 tables; both give the same values (checked by the unit tests).
#pragma once
#include <cstddef>
#include <cstdint>

namespace dechunkd::queue {

// Extends a running CRC: crc32c_extend(crc32c_extend(0, a), b) == crc32c(a ‖ b).
// Start with 0; the pre- and post-inversion are handled inside.
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t n);
inline uint32_t crc32c(const void* data, size_t n) { return crc32c_extend(0, data, n); }

// The portable table version, exposed so the tests can compare it with the hardware path.
uint32_t crc32c_extend_portable(uint32_t crc, const void* data, size_t n);

}  // namespace dechunkd::queue
