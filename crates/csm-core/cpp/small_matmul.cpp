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
// The gradient is MLX's own matmuls, so the primitive is differentiable,
// but training's many-row matmuls never come here.
//
// C entry point: `csm_small_matmul`; errors go through mlx-c's error
// handler (the Rust side captures them).

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_common.h"
#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/c/array.h"
#include "mlx/c/private/array.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace {

using namespace csm_cpu;

// Rows `x` [m, k], weight `w` [n, k] (row-major), output `y` [m, n].
struct Operands {
  const float* x;
  const float* w;
  float* y;
  size_t m;
  size_t k;
  size_t n;
};

// y[:, b..e): each W row streams once and meets every x row. Sixteen
// separate partial sums keep each lane's products in order, so GCC
// vectorizes without reassociating.
inline __attribute__((always_inline)) void rows_body(
    const Operands& o,
    size_t b,
    size_t e) {
  for (size_t j = b; j < e; ++j) {
    const float* __restrict wr = o.w + j * o.k;
    for (size_t r = 0; r < o.m; ++r) {
      const float* __restrict xr = o.x + r * o.k;
      float acc[16] = {};
      size_t i = 0;
      for (; i + 16 <= o.k; i += 16) {
        for (size_t l = 0; l < 16; ++l) {
          acc[l] += xr[i + l] * wr[i + l];
        }
      }
      float sum = 0.0f;
      for (size_t l = 0; l < 16; ++l) {
        sum += acc[l];
      }
      for (; i < o.k; ++i) {
        sum += xr[i] * wr[i];
      }
      o.y[r * o.n + j] = sum;
    }
  }
}

// A row-major copy of the 2-D `a`, whatever its strides (already evaluated:
// this runs inside eval_cpu).
mx::array dense_copy(const mx::array& a) {
  mx::array out(mx::allocator::malloc(a.nbytes()), a.shape(), a.dtype());
  const float* src = a.data<float>();
  float* dst = out.data<float>();
  const auto rows = a.shape(0);
  const auto cols = a.shape(1);
  const auto rs = a.strides()[0];
  const auto cs = a.strides()[1];
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) {
      dst[size_t(i) * cols + j] = src[i * rs + j * cs];
    }
  }
  return out;
}

// Inputs (x [..., k], W [n, k]) -> x W^T [..., n].
class SmallMatmul : public mx::UnaryPrimitive {
 public:
  explicit SmallMatmul(mx::Stream stream) : mx::UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out)
      override {
    const auto& x = inputs[0];
    auto w = inputs[1];
    if (!x.flags().row_contiguous) {
      throw std::invalid_argument("[csm small_matmul] x is not row-contiguous");
    }
    auto& encoder = mx::cpu::get_command_encoder(stream());
    if (!w.flags().row_contiguous) {
      // Weights are parameters, so this is rare: a dense copy, kept alive
      // until the kernel has run.
      w = dense_copy(w);
      encoder.add_temporary(w);
    }
    out.set_data(mx::allocator::malloc(out.nbytes()));
    encoder.set_input_array(x);
    encoder.set_input_array(w);
    encoder.set_output_array(out);
    const size_t k = x.shape(-1);
    const size_t n = out.shape(-1);
    // k = 0 is an empty sum: every output is 0.
    Operands o{
        x.data<float>(),
        w.data<float>(),
        out.data<float>(),
        k == 0 ? out.size() / std::max<size_t>(1, n) : x.size() / k,
        k,
        n};
    // A thread is worth its start-up from about 1 M weights (4 MB, some
    // 60 microseconds of memory traffic) per chunk.
    const size_t min_rows = std::max<size_t>(1, (size_t{1} << 20) / std::max<size_t>(1, k));
    encoder.dispatch([o, min_rows]() {
      parallel_for(o.n, min_rows, 1, [&](size_t b, size_t e) {
        best_isa<rows_body>(o, b, e);
      });
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

  bool is_equivalent(const mx::Primitive&) const override {
    return true;
  }

  const char* name() const override {
    return "CsmSmallMatmul";
  }
};

} // namespace

extern "C" int csm_small_matmul(mlx_array* res, const mlx_array x, const mlx_array w) {
  return c_entry([&] {
    const auto& xa = mlx_array_get_(x);
    const auto& wa = mlx_array_get_(w);
    if (xa.dtype() != mx::float32 || wa.dtype() != mx::float32) {
      throw std::invalid_argument("[csm small_matmul] x and w must be float32");
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
        mx::float32,
        std::make_shared<SmallMatmul>(s),
        {mx::contiguous(xa, false, s), wa});
    mlx_array_set_(*res, y);
  });
}
