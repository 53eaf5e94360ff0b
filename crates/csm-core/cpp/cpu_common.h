// Shared pieces of this crate's MLX CPU primitives (swiglu.cpp,
// small_matmul.cpp, elu.cpp): ISA dispatch, a fork-join over the cores,
// bf16 loads and stores, the CPU stream, and the C entry points' error
// reporting.

#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#include "mlx/c/error.h"
#include "mlx/stream.h"
#include "mlx/types/half_types.h"

namespace csm_cpu {

namespace mx = mlx::core;

#if defined(__x86_64__)
// `Body` compiled for AVX2 + FMA (8 lanes, fused multiply-adds); `Body`
// must be always_inline so that it is compiled again here.
template <auto Body, class... Args>
__attribute__((target("avx2,fma"))) void avx2_clone(Args... args) {
  Body(args...);
}

inline bool has_avx2() {
  static const bool yes =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

// `Body(args...)` in its AVX2 + FMA build when the CPU has them, else as
// compiled for the baseline target.
template <auto Body, class... Args>
void best_isa(Args... args) {
#if defined(__x86_64__)
  if (has_avx2()) {
    avx2_clone<Body, Args...>(args...);
    return;
  }
#endif
  Body(args...);
}

// The cores this process may run on (its affinity mask, which container
// CPU sets narrow; not every core of the host), at most 16: the loops are
// bound by memory bandwidth well before that.
inline size_t usable_cores() {
  static const size_t cores = [] {
    size_t n = std::max(1u, std::thread::hardware_concurrency());
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
      n = std::max(1, CPU_COUNT(&set));
    }
#endif
    return std::min<size_t>(n, 16);
  }();
  return cores;
}

// Runs `f(begin, end)` over [0, n) in one chunk per core (chunks of at least
// `min_chunk`, starting on multiples of `align`), the calling thread taking
// the first.
template <class F>
void parallel_for(size_t n, size_t min_chunk, size_t align, F f) {
  const size_t chunks =
      std::min(usable_cores(), std::max<size_t>(1, n / min_chunk));
  const size_t step = ((n + chunks - 1) / chunks + align - 1) / align * align;
  std::vector<std::thread> workers;
  size_t begin = step;
  for (; begin < n; begin += step) {
    try {
      workers.emplace_back(f, begin, std::min(n, begin + step));
    } catch (const std::system_error&) {
      // No thread to be had (resource limits): this thread does the rest.
      break;
    }
  }
  f(size_t{0}, std::min(n, step));
  for (; begin < n; begin += step) {
    f(begin, std::min(n, begin + step));
  }
  for (auto& w : workers) {
    w.join();
  }
}

// An element as f32: f32 as is, bf16 (its bits) as the top half of an f32.
inline __attribute__((always_inline)) float widen(float v) {
  return v;
}

inline __attribute__((always_inline)) float widen(uint16_t v) {
  return std::bit_cast<float>(uint32_t{v} << 16);
}

// An f32 result stored as f32, or as bf16 rounded to nearest even with NaN
// kept (MLX's conversion).
inline void store(float* y, float v) {
  *y = v;
}

inline void store(mx::bfloat16_t* y, float v) {
  *y = mx::bfloat16_t(v);
}

inline mx::Stream cpu_stream() {
  return mx::default_stream(mx::Device(mx::Device::cpu));
}

// Runs a C entry point's body: 0 on success; 1 with the message through
// mlx-c's error handler (which the Rust side captures) on an exception.
template <class F>
int c_entry(F body) {
  try {
    body();
  } catch (const std::exception& e) {
    mlx_error("%s", e.what());
    return 1;
  }
  return 0;
}

} // namespace csm_cpu
