// Shared pieces of this crate's MLX CPU primitives (swiglu.cpp,
// small_matmul.cpp, elu.cpp, gemm.cpp): ISA dispatch, a fork-join over the
// cores, bf16 loads and stores, dense copies of strided weights, the CPU
// stream, and the C entry points' error reporting.

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
#include <pthread.h>
#include <sched.h>
#endif

#include "mlx/allocator.h"
#include "mlx/array.h"
#include "mlx/backend/cpu/encoder.h"
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

// Puts the `index`-th worker (from 1) on one CPU of the process's set other
// than the calling thread's. Left to itself, the scheduler sometimes queues
// a new thread on the caller's CPU, behind the caller: on the 2-core
// machine half the starts of a 1.3 ms chunk waited the 1.3 ms, so the
// fork-join ran on one core. Only a placement: where it cannot be set, the
// work is the same, just not spread.
inline void keep_off_caller_cpu(std::thread& worker, size_t index) {
#if defined(__linux__)
  cpu_set_t allowed;
  const int here = sched_getcpu();
  if (here < 0 || sched_getaffinity(0, sizeof allowed, &allowed) != 0) {
    return;
  }
  std::vector<int> others;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (cpu != here && CPU_ISSET(cpu, &allowed)) {
      others.push_back(cpu);
    }
  }
  if (others.empty()) {
    return;
  }
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(others[(index - 1) % others.size()], &one);
  pthread_setaffinity_np(worker.native_handle(), sizeof one, &one);
#else
  (void)worker;
  (void)index;
#endif
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
      keep_off_caller_cpu(workers.back(), workers.size());
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

// Copies a strided 2-D weight into a row-major buffer. Planned in
// eval_cpu, run on the stream's thread: only there have the inputs' values
// been computed.
struct StridedCopy {
  const void* src = nullptr;
  void* dst = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t rs = 0;
  int64_t cs = 0;

  template <class T>
  void run() const {
    const T* from = static_cast<const T*>(src);
    T* to = static_cast<T*>(dst);
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        to[i * cols + j] = from[i * rs + j * cs];
      }
    }
  }
};

// Where `w` (a 2-D weight) is not row-contiguous: replaces it with a dense
// buffer, kept alive by `encoder` until the kernel has run, and returns the
// copy to run on the stream's thread before the kernel. Weights are
// parameters, so this is rare. A contiguous `w` gives a copy that does
// nothing.
inline StridedCopy dense_weight(mx::array& w, mx::cpu::CommandEncoder& encoder) {
  if (w.flags().row_contiguous) {
    return {};
  }
  mx::array dense(mx::allocator::malloc(w.nbytes()), w.shape(), w.dtype());
  const StridedCopy copy{
      w.data<void>(),
      dense.data<void>(),
      w.shape(0),
      w.shape(1),
      w.strides()[0],
      w.strides()[1]};
  encoder.add_temporary(dense);
  w = dense;
  return copy;
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
