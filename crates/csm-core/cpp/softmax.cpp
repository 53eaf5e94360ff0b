// Softmax over the last axis as one MLX primitive for the CPU, for
// Whisper's attention (`whisper::model`).
//
// Why: MLX's CPU softmax runs its one-lane `simd::exp` (libm `fmaf` calls
// inside) on one thread; over the 1500 x 1500 scores of every head of every
// encoder layer it was a quarter of a tiny-shape window and more of a
// large-v3-turbo one. Here each row is one pass for the maximum and one for
// e^(x - max) and its sum, then a scale, vectorized for AVX2 + FMA where the
// CPU has them and split over the cores by rows. Inference only: it has no
// gradient.
//
// C entry point: `csm_softmax`; errors go through mlx-c's error handler.

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

// Rows [b, e) of `n` elements each: y = e^(x - max) / sum. A row of -inf
// gives NaN, as MLX's softmax does.
inline __attribute__((always_inline)) void softmax_rows(
    const float* x,
    float* y,
    size_t n,
    size_t b,
    size_t e) {
  for (size_t r = b; r < e; ++r) {
    const float* __restrict xr = x + r * n;
    float* __restrict yr = y + r * n;
    float m = -__builtin_inff();
    for (size_t i = 0; i < n; ++i) {
      m = xr[i] > m ? xr[i] : m;
    }
    float sum = 0.0f;
    for (size_t i = 0; i < n; ++i) {
      const float v = exp_f32(xr[i] - m);
      yr[i] = v;
      sum += v;
    }
    const float inv = 1.0f / sum;
    for (size_t i = 0; i < n; ++i) {
      yr[i] *= inv;
    }
  }
}

class Softmax : public mx::Primitive {
 public:
  explicit Softmax(mx::Stream stream) : mx::Primitive(stream) {}

  void eval_cpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override {
    auto& encoder = mx::cpu::get_command_encoder(stream());
    const auto& x = inputs[0];
    auto& y = outputs[0];
    if (!x.flags().row_contiguous) {
      throw std::invalid_argument("[csm softmax] input is not row-contiguous");
    }
    encoder.set_input_array(x);
    y.set_data(mx::allocator::malloc(y.nbytes()));
    encoder.set_output_array(y);
    const size_t n = x.shape().back();
    const size_t rows = n == 0 ? 0 : x.size() / n;
    encoder.dispatch([in = x.data<float>(), out = y.data<float>(), n, rows]() {
      // About 2^16 elements or more per thread.
      const size_t min_rows = std::max<size_t>(1, (size_t{1} << 16) / (n + 1));
      parallel_for(rows, min_rows, 1, [&](size_t b, size_t e) {
        best_isa<softmax_rows, const float*, float*, size_t, size_t, size_t>(
            in, out, n, b, e);
      });
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&)
      override {
    throw std::runtime_error("[csm] CsmSoftmax is CPU-only");
  }

  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

  const char* name() const override {
    return "CsmSoftmax";
  }

  bool is_equivalent(const mx::Primitive&) const override {
    return true;
  }
};

} // namespace

extern "C" int csm_softmax(mlx_array* res, const mlx_array x) {
  return c_entry([&] {
    const auto& xa = mlx_array_get_(x);
    if (xa.dtype() != mx::float32 || xa.ndim() == 0) {
      throw std::invalid_argument(
          "[csm softmax] x must be float32 with at least one axis");
    }
    auto s = cpu_stream();
    auto y = mx::array(
        xa.shape(),
        mx::float32,
        std::make_shared<Softmax>(s),
        {mx::contiguous(xa, false, s)});
    mlx_array_set_(*res, y);
  });
}
