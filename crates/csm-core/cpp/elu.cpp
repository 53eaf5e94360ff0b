// ELU (alpha = 1) as one MLX primitive for the CPU, for Mimi's SEANet
// encoder and decoder (audio encoding in `csm prepare`, decoding of every
// generated sample).
//
// Why: written with MLX ops it is 4 scalar, single-threaded passes
// (`minimum`, libm's `expm1f`, `greater`, `select`) over activations of up
// to 64 channels x 24,000 samples a second; `perf` over a Mimi decode put
// 13% of its samples in `expm1f` and the select. Here it is one pass,
// vectorized for AVX2 + FMA where the CPU has them and split over the cores.
// Inference only: it has no gradient (Mimi is never trained here).
//
// C entry point: `csm_elu`; errors go through mlx-c's error handler.

#include <memory>
#include <stdexcept>
#include <vector>

#include "cpu_common.h"
#include "elementwise.h"
#include "mlx/c/array.h"
#include "mlx/c/private/array.h"
#include "mlx/ops.h"

namespace {

using namespace csm_cpu;

// e^x - 1 for x <= 0 without the cancellation of `exp(x) - 1` near 0: a
// Taylor polynomial to x^8 on [-0.35, 0] (truncation under 3e-10), and
// `exp(x) - 1` below, where the result is at least 0.3 in magnitude.
inline __attribute__((always_inline)) float expm1_nonpositive(float x) {
  float p = 1.0f / 40320.0f;
  p = p * x + 1.0f / 5040.0f;
  p = p * x + 1.0f / 720.0f;
  p = p * x + 1.0f / 120.0f;
  p = p * x + 1.0f / 24.0f;
  p = p * x + 1.0f / 6.0f;
  p = p * x + 0.5f;
  p = p * x + 1.0f;
  const float small = p * x;
  const float large = exp_f32(x) - 1.0f;
  return x > -0.35f ? small : large;
}

// Input x, output x for x > 0, e^x - 1 otherwise (NaN stays NaN).
inline __attribute__((always_inline)) void elu_body(
    const float* const* in,
    float* const* out,
    size_t b,
    size_t e) {
  const float* __restrict x = in[0];
  float* __restrict y = out[0];
  for (size_t i = b; i < e; ++i) {
    const float xi = x[i];
    const float neg = expm1_nonpositive(xi < 0.0f ? xi : 0.0f);
    y[i] = xi > 0.0f ? xi : (xi != xi ? xi : neg);
  }
}

class Elu : public ElementwiseF32<1, 1, on_best_isa<elu_body>> {
 public:
  using ElementwiseF32::ElementwiseF32;

  const char* name() const override {
    return "CsmElu";
  }
};

} // namespace

extern "C" int csm_elu(mlx_array* res, const mlx_array x) {
  return c_entry([&] {
    const auto& xa = mlx_array_get_(x);
    if (xa.dtype() != mx::float32) {
      throw std::invalid_argument("[csm elu] x must be float32");
    }
    auto s = cpu_stream();
    auto y = mx::array(
        xa.shape(),
        mx::float32,
        std::make_shared<Elu>(s),
        {mx::contiguous(xa, false, s)});
    mlx_array_set_(*res, y);
  });
}
