/* mlx-rs seeds its default random state from macOS's mach_approximate_time.
   Elsewhere, provide it from CLOCK_MONOTONIC (nanoseconds). */
#include <stdint.h>
#include <time.h>
uint64_t mach_approximate_time(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
