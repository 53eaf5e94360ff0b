// `x @ W^T` for a few rows of `x` (generation: one frame, one codebook at a
// time) as one MLX primitive for the CPU, with `W [n, k]` in PyTorch's
// layout (rows are outputs).
//
// Why: MLX sends every f32 matmul to `cblas_sgemm`, and with one row the
// Debian OpenBLAS (0.3.21, before its GEMV forwarding) still packs the
// whole weight into a scratch buffer and runs its matrix kernel on the
// copy. On the project's 2-core machine that streams a weight at 23-29
// GB/s, where dot products over each weight row reach 57-87 GB/s from
// memory (bench/one_row_matmul.cpp, docs/benchmarks.md). Generation is
// bound by this: every frame reads the backbone once and the depth decoder
// 31 times, about 18 GB in f32 by the parameter count. Here each weight row
// streams once and meets every row of `x`, vectorized for AVX2 + FMA where
// the CPU has them and split over the cores.
//
// bf16 operands (x and W both bf16, as a bf16 model on the CPU has them)
// give a bf16 result with the sum in f32, as GPUs compute it. MLX's own
// bf16 matmul on the CPU is a generic single-threaded loop (97% of a bf16
// CSM-1B generation profile, 3.3-3.5 s a frame); here W streams at half the
// bytes of f32.
//
// The gradient is MLX's own matmuls, so the primitive is differentiable,
// but training's many-row matmuls never come here.
//
// C entry point: `csm_small_matmul`; errors go through mlx-c's error
// handler (the Rust side captures them).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_common.h"
#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/c/array.h"
#include "mlx/c/private/array.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace {

using namespace csm_cpu;

// Rows `x` [m, k] (f32: bf16 rows are widened first), weight `w` [n, k]
// (row-major, `W` = float or bf16 bits), output `y` [m, n] (`Y` = float or
// bf16).
template <class W, class Y>
struct Operands {
  const float* x;
  const W* w;
  Y* y;
  size_t m;
  size_t k;
  size_t n;
};

// The dot product of an f32 row with a weight row of k elements (f32, or
// bf16 widened element by element where AVX2 is missing). Sixteen separate
// partial sums keep each lane's products in order, so GCC vectorizes
// without reassociating; two AVX2 FMA chains keep up with memory for f32.
template <class W>
inline __attribute__((always_inline)) float dot(
    const float* __restrict x,
    const W* __restrict w,
    size_t k) {
  float acc[16] = {};
  size_t i = 0;
  for (; i + 16 <= k; i += 16) {
    for (size_t l = 0; l < 16; ++l) {
      acc[l] += x[i + l] * widen(w[i + l]);
    }
  }
  float sum = 0.0f;
  for (size_t l = 0; l < 16; ++l) {
    sum += acc[l];
  }
  for (; i < k; ++i) {
    sum += x[i] * widen(w[i]);
  }
  return sum;
}

#if defined(__x86_64__)
// A bf16 weight row with AVX2: eight elements widened by one zero-extend
// and one shift (GCC's own vectorization of `widen` took 128-bit halves and
// shuffles), four FMA chains so that half the bytes per element do not
// make the FMA latency the limit, and a short horizontal sum (K is 1024 in
// the depth decoder, where a long reduction costs as much as the row).
// Measured on the project's machine over 512 MB of weights, 2 threads:
// 63 GB/s, against 51 GB/s for GCC's vector code and 78 GB/s of f32 (so
// 1.6x the elements per second of f32).
__attribute__((target("avx2,fma"), always_inline)) inline __m256 widen8(
    const uint16_t* w) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx2,fma"))) inline float dot_avx2(
    const float* __restrict x,
    const uint16_t* __restrict w,
    size_t k) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 32 <= k; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), widen8(w + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), widen8(w + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), widen8(w + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), widen8(w + i + 24), a3);
  }
  const __m256 a = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
  float sum = _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)));
  for (; i < k; ++i) {
    sum += x[i] * widen(w[i]);
  }
  return sum;
}

#endif

// y[:, b..e): each W row streams once and meets every x row (`Dot`: one of
// the dot products above).
template <auto Dot, class W, class Y>
inline __attribute__((always_inline)) void rows_body(
    const Operands<W, Y>& o,
    size_t b,
    size_t e) {
  for (size_t j = b; j < e; ++j) {
    const W* wr = o.w + j * o.k;
    for (size_t r = 0; r < o.m; ++r) {
      store(&o.y[r * o.n + j], Dot(o.x + r * o.k, wr, o.k));
    }
  }
}

#if defined(__x86_64__)
// `rows_body` for bf16 weights with AVX2.
template <class Y>
__attribute__((target("avx2,fma"))) void rows_bf16_avx2(
    const Operands<uint16_t, Y>& o,
    size_t b,
    size_t e) {
  rows_body<dot_avx2>(o, b, e);
}
#endif

// Runs `rows_body` over the weight rows on all cores; `baseline` keeps to
// the code compiled for the baseline target (what CPUs without AVX2 and
// non-x86 machines run), so tests can check it on any machine.
template <class W, class Y>
void run_rows(const Operands<W, Y>& o, bool baseline) {
  // A thread is worth its start-up from about 1 M weights (4 MB, some
  // 60 microseconds of memory traffic) per chunk.
  const size_t min_rows =
      std::max<size_t>(1, (size_t{1} << 20) / std::max<size_t>(1, o.k));
  parallel_for(o.n, min_rows, 1, [&](size_t b, size_t e) {
    if (baseline) {
      rows_body<dot<W>, W, Y>(o, b, e);
      return;
    }
#if defined(__x86_64__)
    if constexpr (sizeof(W) == 2) {
      if (has_avx2()) {
        rows_bf16_avx2(o, b, e);
        return;
      }
    }
#endif
    best_isa<rows_body<dot<W>, W, Y>>(o, b, e);
  });
}

// Inputs (x [..., k], W [n, k]) -> x W^T [..., n].
class SmallMatmul : public mx::UnaryPrimitive {
 public:
  SmallMatmul(mx::Stream stream, bool baseline)
      : mx::UnaryPrimitive(stream), baseline_(baseline) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out)
      override {
    const auto& x = inputs[0];
    auto w = inputs[1];
    if (!x.flags().row_contiguous) {
      throw std::invalid_argument("[csm small_matmul] x is not row-contiguous");
    }
    auto& encoder = mx::cpu::get_command_encoder(stream());
    const bool bf16 = x.dtype() == mx::bfloat16;
    const StridedCopy copy = dense_weight(w, encoder);
    out.set_data(mx::allocator::malloc(out.nbytes()));
    encoder.set_input_array(x);
    encoder.set_input_array(inputs[1]);
    encoder.set_output_array(out);
    const size_t k = x.shape(-1);
    const size_t n = out.shape(-1);
    // k = 0 is an empty sum: every output is 0.
    const size_t m =
        k == 0 ? out.size() / std::max<size_t>(1, n) : x.size() / k;
    if (!bf16) {
      Operands<float, float> o{
          x.data<float>(), w.data<float>(), out.data<float>(), m, k, n};
      encoder.dispatch([o, copy, baseline = baseline_]() {
        copy.run<float>();
        run_rows(o, baseline);
      });
      return;
    }
    // The few bf16 rows of x, widened once (not once per weight row).
    mx::array x32(
        mx::allocator::malloc(x.size() * sizeof(float)),
        x.shape(),
        mx::float32);
    encoder.add_temporary(x32);
    const auto* xb = x.data<uint16_t>();
    float* xf = x32.data<float>();
    const size_t xn = x.size();
    Operands<uint16_t, mx::bfloat16_t> o{
        xf, w.data<uint16_t>(), out.data<mx::bfloat16_t>(), m, k, n};
    encoder.dispatch([o, copy, xb, xf, xn, baseline = baseline_]() {
      copy.run<uint16_t>();
      for (size_t i = 0; i < xn; ++i) {
        xf[i] = widen(xb[i]);
      }
      run_rows(o, baseline);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[csm small_matmul] CPU-only");
  }

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>&) override {
    auto s = stream();
    const auto& x = primals[0];
    const auto& w = primals[1];
    const auto& c = cotangents[0];
    std::vector<mx::array> grads;
    for (int a : argnums) {
      if (a == 0) {
        grads.push_back(mx::matmul(c, w, s)); // d x = c W: [..., k]
      } else {
        auto x2 = mx::reshape(x, {-1, x.shape(-1)}, s); // [rows, k]
        auto c2 = mx::reshape(c, {-1, c.shape(-1)}, s); // [rows, n]
        grads.push_back(mx::matmul(mx::transpose(c2, s), x2, s)); // [n, k]
      }
    }
    return grads;
  }

  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() = inputs[1].shape(0);
    return {shape};
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    return baseline_ ==
        static_cast<const SmallMatmul&>(other).baseline_;
  }

  const char* name() const override {
    return "CsmSmallMatmul";
  }

 private:
  bool baseline_;
};

} // namespace

// `baseline` non-zero: the baseline-target kernels whatever the CPU has
// (tests).
extern "C" int csm_small_matmul(
    mlx_array* res,
    const mlx_array x,
    const mlx_array w,
    int baseline) {
  return c_entry([&] {
    const auto& xa = mlx_array_get_(x);
    const auto& wa = mlx_array_get_(w);
    const bool f32 = xa.dtype() == mx::float32 && wa.dtype() == mx::float32;
    const bool bf16 = xa.dtype() == mx::bfloat16 && wa.dtype() == mx::bfloat16;
    if (!f32 && !bf16) {
      throw std::invalid_argument(
          "[csm small_matmul] x and w must both be float32 or both bfloat16");
    }
    if (xa.ndim() < 1 || wa.ndim() != 2) {
      throw std::invalid_argument(
          "[csm small_matmul] x must be [..., k] and w [n, k]");
    }
    if (xa.shape(-1) != wa.shape(1)) {
      throw std::invalid_argument(
          "[csm small_matmul] x has " + std::to_string(xa.shape(-1)) +
          " columns, w has " + std::to_string(wa.shape(1)));
    }
    auto s = cpu_stream();
    auto shape = xa.shape();
    shape.back() = wa.shape(0);
    // Not `contiguous(w)`: MLX copies a view of a larger buffer even when
    // it is row-contiguous; eval_cpu copies only a strided weight.
    auto y = mx::array(
        shape,
        xa.dtype(),
        std::make_shared<SmallMatmul>(s, baseline != 0),
        {mx::contiguous(xa, false, s), wa});
    mlx_array_set_(*res, y);
  });
}
