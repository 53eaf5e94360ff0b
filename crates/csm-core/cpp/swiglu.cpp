// SwiGLU as one MLX primitive for the CPU: `y = silu(gate) * up` in one pass
// over memory, and its gradient in one more.
//
// Why: MLX's PyPI CPU wheel for Linux x86_64 runs every elementwise op as a
// scalar loop on one thread, one pass over memory per op. A SwiGLU written
// with MLX ops costs 5 such passes forward (one of them `powf`, 3-4 ns per
// element) and 7 backward, with the second core idle. Here each direction
// is a single loop, vectorized for AVX2 + FMA where the CPU has them
// (checked at run time) and split over the machine's cores. With the depth decoder on every
// frame that took a CSM-1B step on the project's 2-core machine from 12.62
// to 12.00 s (docs/benchmarks.md).
//
// Being a primitive (not a kernel run on evaluated arrays) matters: it runs
// when MLX evaluates the graph, so a traced training step keeps exactly the
// buffers the backward needs (gate, up and s = sigmoid(gate)), as MLX's own
// ops would.
//
// C entry point: `csm_swiglu`, taking and returning mlx-c arrays; errors go
// through mlx-c's error handler (the Rust side captures them).

#include <array>
#include <cstddef>
#include <cstdint>
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

// e^x for f32, written so GCC vectorizes a loop around it: range reduction
// x = n ln2 + r with n rounded by the 1.5 * 2^23 trick (no float-to-int
// conversion, so NaN flows through; every branch is a select, which GCC
// vectorizes under -fno-trapping-math), a degree-6 polynomial for e^r on
// |r| <= ln2 / 2 (Cephes' expf coefficients, about 1 ulp), and 2^n built in
// the exponent bits. Saturates to inf above ln(FLT_MAX) and to 0 below
// ln(FLT_MIN) (where the exact value is a denormal under 1.2e-38).
inline __attribute__((always_inline)) float exp_f32(float x) {
  constexpr float hi = 88.3762626647949f; // keeps n <= 127
  constexpr float lo = -87.3365447505531f; // keeps n >= -126
  float xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  constexpr float magic = 12582912.0f; // 1.5 * 2^23
  const float shifted = xc * 1.44269504088896341f + magic;
  const float n = shifted - magic;
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * (r * r) + r + 1.0f;
  const auto bits = __builtin_bit_cast(int32_t, shifted);
  // The low mantissa bits of `shifted` hold n (offset by 2^22); move n + 127
  // into the exponent field.
  const int32_t scale_bits = (bits - 0x4B400000 + 127) << 23;
  float out = er * __builtin_bit_cast(float, scale_bits);
  out = x > hi ? __builtin_inff() : out;
  out = x < lo ? 0.0f : out;
  return out;
}

// Signature of a kernel over elements [b, e) of its inputs and outputs.
using RangeKernel = void (*)(const float* const*, float* const*, size_t, size_t);

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

// `Body` in its best build for this CPU, as a RangeKernel.
template <RangeKernel Body>
constexpr RangeKernel on_best_isa =
    best_isa<Body, const float* const*, float* const*, size_t, size_t>;

// An elementwise CPU primitive over f32 arrays of one shape: `In`
// row-contiguous inputs, `Out` fresh outputs, `Kernel` run over the
// elements on all cores.
template <size_t In, size_t Out, RangeKernel Kernel>
class ElementwiseF32 : public mx::Primitive {
 public:
  explicit ElementwiseF32(mx::Stream stream) : mx::Primitive(stream) {}

  void eval_cpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override {
    auto& encoder = mx::cpu::get_command_encoder(stream());
    std::array<const float*, In> in{};
    std::array<float*, Out> out{};
    for (size_t i = 0; i < In; ++i) {
      if (!inputs[i].flags().row_contiguous) {
        throw std::invalid_argument(
            std::string("[csm swiglu] ") + name() + ": input " +
            std::to_string(i) + " is not row-contiguous");
      }
      encoder.set_input_array(inputs[i]);
      in[i] = inputs[i].data<float>();
    }
    for (size_t i = 0; i < Out; ++i) {
      outputs[i].set_data(mx::allocator::malloc(outputs[i].nbytes()));
      encoder.set_output_array(outputs[i]);
      out[i] = outputs[i].data<float>();
    }
    // Below 2^16 elements a thread costs more than it saves; chunks start
    // on 64-element (256-byte) boundaries.
    encoder.dispatch([in, out, n = inputs[0].size()]() {
      parallel_for(n, size_t{1} << 16, 64, [&](size_t b, size_t e) {
        Kernel(in.data(), out.data(), b, e);
      });
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&)
      override {
    throw std::runtime_error("[csm swiglu] the fused SwiGLU is CPU-only");
  }

  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override {
    return std::vector<mx::Shape>(Out, inputs[0].shape());
  }

  // No parameters: equal inputs give equal outputs.
  bool is_equivalent(const mx::Primitive&) const override {
    return true;
  }
};

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
