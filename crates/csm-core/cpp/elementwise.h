// Elementwise f32 MLX primitives of this crate (swiglu.cpp, elu.cpp): a
// vectorizable e^x and a base class that runs a kernel over the elements on
// all cores.

#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_common.h"
#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"

namespace csm_cpu {

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
            std::string("[csm] ") + name() + ": input " +
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
    throw std::runtime_error(std::string("[csm] ") + name() + " is CPU-only");
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

} // namespace csm_cpu
