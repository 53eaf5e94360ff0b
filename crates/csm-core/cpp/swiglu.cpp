// SwiGLU as one MLX primitive for the CPU: `y = silu(gate) * up` in one pass
// over memory, and its gradient in one more.
//
// Why: MLX's PyPI CPU wheel for Linux x86_64 runs every elementwise op as a
// scalar loop on one thread, one pass over memory per op. A SwiGLU written
// with MLX ops costs 5 such passes forward (one of them `powf`, 3-4 ns per
// element) and 7 backward, with the second core idle. Here each direction
// is a single loop, vectorized for AVX2 + FMA where the CPU has them
// (checked at run time) and split over the machine's cores. With the depth
// decoder on every frame that took a CSM-1B step on the project's 2-core
// machine from 12.62 to 12.00 s (docs/benchmarks.md).
//
// Being a primitive (not a kernel run on evaluated arrays) matters: it runs
// when MLX evaluates the graph, so a traced training step keeps exactly the
// buffers the backward needs (gate, up and s = sigmoid(gate)), as MLX's own
// ops would.
//
// C entry point: `csm_swiglu`, taking and returning mlx-c arrays; errors go
// through mlx-c's error handler (the Rust side captures them).

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

// Inputs (g, u), outputs (y, s): y = g s u and s = sigmoid(g) =
// 1 / (1 + e^-g).
inline __attribute__((always_inline)) void forward_body(
    const float* const* in,
    float* const* out,
    size_t b,
    size_t e) {
  const float* __restrict g = in[0];
  const float* __restrict u = in[1];
  float* __restrict y = out[0];
  float* __restrict s = out[1];
  for (size_t i = b; i < e; ++i) {
    const float si = 1.0f / (1.0f + exp_f32(-g[i]));
    s[i] = si;
    y[i] = g[i] * si * u[i];
  }
}

// Inputs (g, u, s, c), outputs (d gate, d up), for the cotangent c of y:
// d up = c g s, d gate = c u (s + g s (1 - s)).
inline __attribute__((always_inline)) void backward_body(
    const float* const* in,
    float* const* out,
    size_t b,
    size_t e) {
  const float* __restrict g = in[0];
  const float* __restrict u = in[1];
  const float* __restrict s = in[2];
  const float* __restrict c = in[3];
  float* __restrict dg = out[0];
  float* __restrict du = out[1];
  for (size_t i = b; i < e; ++i) {
    const float si = s[i];
    const float silu = g[i] * si;
    du[i] = c[i] * silu;
    dg[i] = c[i] * u[i] * (si + silu * (1.0f - si));
  }
}

// Inputs (g, u, s, cotangent of y) -> (d gate, d up).
class SwigluVjp : public ElementwiseF32<4, 2, on_best_isa<backward_body>> {
 public:
  using ElementwiseF32::ElementwiseF32;

  const char* name() const override {
    return "CsmSwigluVjp";
  }
};

// Inputs (gate, up) -> (y, s): y = silu(gate) * up, s = sigmoid(gate) kept
// for the backward. Only y is handed out; s's cotangent is never read.
class Swiglu : public ElementwiseF32<2, 2, on_best_isa<forward_body>> {
 public:
  using ElementwiseF32::ElementwiseF32;

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override {
    auto s = stream();
    // A cotangent can be a broadcast (e.g. of a sum's): make it dense.
    auto cot = mx::contiguous(cotangents[0], false, s);
    auto grads = mx::array::make_arrays(
        {primals[0].shape(), primals[1].shape()},
        {mx::float32, mx::float32},
        std::make_shared<SwigluVjp>(s),
        {primals[0], primals[1], outputs[1], cot});
    std::vector<mx::array> out;
    for (int a : argnums) {
      out.push_back(grads[a]);
    }
    return out;
  }

  const char* name() const override {
    return "CsmSwiglu";
  }
};

} // namespace

extern "C" int csm_swiglu(mlx_array* res, const mlx_array gate, const mlx_array up) {
  return c_entry([&] {
    const auto& g = mlx_array_get_(gate);
    const auto& u = mlx_array_get_(up);
    if (g.dtype() != mx::float32 || u.dtype() != mx::float32) {
      throw std::invalid_argument("[csm swiglu] gate and up must be float32");
    }
    if (g.shape() != u.shape()) {
      throw std::invalid_argument(
          "[csm swiglu] gate and up must have the same shape");
    }
    auto s = cpu_stream();
    auto outs = mx::array::make_arrays(
        {g.shape(), g.shape()},
        {mx::float32, mx::float32},
        std::make_shared<Swiglu>(s),
        {mx::contiguous(g, false, s), mx::contiguous(u, false, s)});
    // Dropping the handle to s keeps its buffer: it is y's sibling, and the
    // backward holds it as an input.
    mlx_array_set_(*res, outs[0]);
  });
}
