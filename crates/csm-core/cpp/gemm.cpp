// f32 products of many rows with a weight in its stored layout, as one MLX
// primitive for the CPU: `y = x W^T` (a Linear layer) and `y = x W` (its
// input gradient), each the other's gradient. Training's frozen weights go
// through it on x86_64 CPUs with AVX2.
//
// Why: a CSM-1B training step on the CPU was 82% OpenBLAS `sgemm` kernel,
// and OpenBLAS packs both operands of every call, the weight included, and
// zeroes the output in a pass of its own before the kernel. The kernels
// of `gemm_kernels.h` read the weight where it lies (forward) or copy
// plain row segments of it (backward), and pack only the activations.
// See there for the scheme and the figures.
//
// Products of more than `kKernelRows` rows (the depth decoder on every
// frame) go to the BLAS, whose kernel gains with the rows where these do
// not.
//
// Threads: the work is split over the cores with `parallel_for`. OpenBLAS's
// idle workers spin for a while after each of its calls and took half of a
// core from these kernels when they ran next to them, so the trainer holds
// OpenBLAS to one thread while it runs (`runtime::SingleThreadBlas`), and
// the products this primitive hands to the BLAS get the cores back for
// their call.
//
// C entry points: `csm_gemm`, `csm_gemm_available`; errors go through
// mlx-c's error handler (the Rust side captures them).

#include <dlfcn.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_common.h"
#include "gemm_kernels.h"
#include "mlx/c/array.h"
#include "mlx/c/private/array.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace {

using namespace csm_cpu;

// Which product a `Gemm` computes, for x [M, a] and W [r, c] row-major.
enum class Form {
  // y = x W^T: a = c, y [M, r].
  XWt,
  // y = x W: a = r, y [M, c].
  XW,
};

#if defined(__x86_64__)
using namespace csm_gemm_kernels;

// Operands of one product, rows flattened: x [m, a], W [r, c], y [m, r or c].
struct Product {
  const float* x;
  const float* w;
  float* y;
  size_t m;
  size_t r;
  size_t c;
  // Packed x, and (forward) the transposed output.
  float* packed;
  float* yt;
};

// A thread is worth its start-up (some 15 microseconds) from about this many
// multiply-adds per chunk.
constexpr size_t kChunkFlops = size_t{1} << 21;

// Most rows the kernels take; more go to the BLAS. OpenBLAS's kernel gains
// with the rows (its packing spreads over more of them) and these kernels
// do not (their packed rows leave L2): on the 2-core machine, for the
// backbone's shapes, it ran at 0.85-0.93x of these with 150 rows and even
// with 600 (bench/gemm.cpp), and with the depth decoder on every frame
// (4192 rows) a step through these kernels took 12.5 s against 12.0 s
// through OpenBLAS.
constexpr size_t kKernelRows = 384;

// The process's CBLAS (MLX's, found at run time so that this library links
// no BLAS of its own) and, where it is OpenBLAS, its thread count.
struct Blas {
  using Sgemm = void (*)(int, int, int, int, int, int, float, const float*,
                         int, const float*, int, float, float*, int);
  Sgemm sgemm = nullptr;
  int (*get_threads)() = nullptr;
  void (*set_threads)(int) = nullptr;

  static const Blas& get() {
    static const Blas blas = [] {
      Blas b;
      b.sgemm = reinterpret_cast<Sgemm>(dlsym(RTLD_DEFAULT, "cblas_sgemm"));
      b.get_threads = reinterpret_cast<int (*)()>(
          dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
      b.set_threads = reinterpret_cast<void (*)(int)>(
          dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
      return b;
    }();
    return blas;
  }
};

// OpenBLAS's threads when nothing holds it to one: `OPENBLAS_NUM_THREADS`
// where the user set it, else the usable cores.
int blas_threads() {
  static const int threads = [] {
    const char* env = std::getenv("OPENBLAS_NUM_THREADS");
    const int set = env ? std::atoi(env) : 0;
    return set > 0 ? set : static_cast<int>(usable_cores());
  }();
  return threads;
}

// The product through the BLAS on all its threads. The trainer holds
// OpenBLAS to one thread (its idle workers would spin next to the kernels
// above); a product of this size gets the threads back for its call. Its
// workers then spin for a while after it, which costs the kernels only
// where the two kinds of product alternate.
void run_blas(const Product& p, bool transpose_w) {
  enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
  const Blas& blas = Blas::get();
  const int before = blas.get_threads ? blas.get_threads() : 0;
  const bool widen = before == 1 && blas.set_threads && blas_threads() > 1;
  if (widen) {
    blas.set_threads(blas_threads());
  }
  const int m = static_cast<int>(p.m);
  const int r = static_cast<int>(p.r);
  const int c = static_cast<int>(p.c);
  if (transpose_w) {
    // y [m, r] = x [m, c] W^T
    blas.sgemm(kRowMajor, kNoTrans, kTrans, m, r, c, 1.0f, p.x, c, p.w, c, 0.0f, p.y, r);
  } else {
    // y [m, c] = x [m, r] W
    blas.sgemm(kRowMajor, kNoTrans, kNoTrans, m, c, r, 1.0f, p.x, r, p.w, c, 0.0f, p.y, c);
  }
  if (widen) {
    blas.set_threads(before);
  }
}

void run_forward(const Product& p) {
  const size_t panels = (p.m + kPanelX - 1) / kPanelX;
  parallel_for(panels, 1, 1, [&](size_t b, size_t e) {
    pack_x16(p.x, p.packed, p.m, p.c, b, e);
  });
  const size_t min_rows =
      std::max<size_t>(kPanel6, kChunkFlops / std::max<size_t>(1, p.m * p.c));
  parallel_for(p.r, min_rows, kPanel6, [&](size_t b, size_t e) {
    forward_range(p.w, p.packed, p.yt, p.y, p.m, p.c, p.r, b, e);
  });
}

void run_backward(const Product& p) {
  const size_t panels = (p.m + kPanel6 - 1) / kPanel6;
  parallel_for(panels, 1, 1, [&](size_t b, size_t e) {
    pack_x6(p.x, p.packed, p.m, p.r, b, e);
  });
  const size_t min_cols =
      std::max<size_t>(16, kChunkFlops / std::max<size_t>(1, p.m * p.r));
  parallel_for(p.c, min_cols, 16, [&](size_t b, size_t e) {
    std::vector<float> block(kBackwardRows * kBackwardCols);
    backward_range(p.packed, p.w, p.y, p.m, p.r, p.c, b, e, block.data());
  });
}
#endif

bool available() {
#if defined(__x86_64__)
  return has_avx2() && Blas::get().sgemm != nullptr;
#else
  return false;
#endif
}

class Gemm : public mx::UnaryPrimitive {
 public:
  Gemm(mx::Stream stream, Form form) : mx::UnaryPrimitive(stream), form_(form) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out)
      override {
    const auto& x = inputs[0];
    auto w = inputs[1];
    if (!x.flags().row_contiguous) {
      throw std::invalid_argument("[csm gemm] x is not row-contiguous");
    }
    auto& encoder = mx::cpu::get_command_encoder(stream());
    const StridedCopy copy = dense_weight(w, encoder);
    out.set_data(mx::allocator::malloc(out.nbytes()));
    encoder.set_input_array(x);
    encoder.set_input_array(inputs[1]);
    encoder.set_output_array(out);
    const size_t r = w.shape(0);
    const size_t c = w.shape(1);
    const size_t reduced = form_ == Form::XWt ? c : r;
    const size_t m = out.size() / std::max<size_t>(1, out.shape(-1));
    float* y = out.data<float>();
    if (reduced == 0 || m == 0) {
      // An empty sum: every output is 0.
      const size_t bytes = out.nbytes();
      encoder.dispatch([y, bytes]() { std::memset(y, 0, bytes); });
      return;
    }
#if defined(__x86_64__)
    if (m > kKernelRows) {
      const Product p{x.data<float>(), w.data<float>(), y, m, r, c, nullptr, nullptr};
      const bool transpose_w = form_ == Form::XWt;
      encoder.dispatch([p, copy, transpose_w]() {
        copy.run<float>();
        run_blas(p, transpose_w);
      });
      return;
    }
    // Packed x: panels of 16 rows (forward) or 6 (backward), zero-padded.
    const size_t padded = form_ == Form::XWt
        ? (m + kPanelX - 1) / kPanelX * kPanelX
        : (m + kPanel6 - 1) / kPanel6 * kPanel6;
    mx::array packed(
        mx::allocator::malloc(padded * reduced * sizeof(float)),
        {static_cast<int>(padded), static_cast<int>(reduced)},
        mx::float32);
    encoder.add_temporary(packed);
    Product p{
        x.data<float>(),
        w.data<float>(),
        y,
        m,
        r,
        c,
        packed.data<float>(),
        nullptr};
    if (form_ == Form::XWt) {
      mx::array yt(
          mx::allocator::malloc(padded * r * sizeof(float)),
          {static_cast<int>(r), static_cast<int>(padded)},
          mx::float32);
      encoder.add_temporary(yt);
      p.yt = yt.data<float>();
      encoder.dispatch([p, copy]() {
        copy.run<float>();
        run_forward(p);
      });
      return;
    }
    encoder.dispatch([p, copy]() {
      copy.run<float>();
      run_backward(p);
    });
#else
    throw std::runtime_error("[csm gemm] needs an x86_64 CPU with AVX2");
#endif
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[csm gemm] CPU-only");
  }

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>&) override {
    auto s = stream();
    const auto& x = primals[0];
    const auto& w = primals[1];
    const auto& g = cotangents[0];
    std::vector<mx::array> grads;
    for (int a : argnums) {
      if (a == 0) {
        // d x = g W (forward) or g W^T (backward form): the other form.
        const Form other = form_ == Form::XWt ? Form::XW : Form::XWt;
        grads.push_back(make(g, w, other, s));
        continue;
      }
      auto x2 = mx::reshape(x, {-1, x.shape(-1)}, s); // [rows, a]
      auto g2 = mx::reshape(g, {-1, g.shape(-1)}, s); // [rows, r or c]
      if (form_ == Form::XWt) {
        grads.push_back(mx::matmul(mx::transpose(g2, s), x2, s)); // [r, c]
      } else {
        grads.push_back(mx::matmul(mx::transpose(x2, s), g2, s)); // [r, c]
      }
    }
    return grads;
  }

  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() = inputs[1].shape(form_ == Form::XWt ? 0 : 1);
    return {shape};
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    return form_ == static_cast<const Gemm&>(other).form_;
  }

  const char* name() const override {
    return "CsmGemm";
  }

  // The product as a lazy array, operands checked.
  static mx::array make(
      const mx::array& x,
      const mx::array& w,
      Form form,
      mx::Stream s) {
    if (!available()) {
      throw std::invalid_argument(
          "[csm gemm] needs an x86_64 CPU with AVX2 and FMA");
    }
    if (x.dtype() != mx::float32 || w.dtype() != mx::float32) {
      throw std::invalid_argument("[csm gemm] x and w must both be float32");
    }
    if (x.ndim() < 1 || w.ndim() != 2) {
      throw std::invalid_argument("[csm gemm] x must be [..., a] and w [r, c]");
    }
    const int a = form == Form::XWt ? w.shape(1) : w.shape(0);
    if (x.shape(-1) != a) {
      throw std::invalid_argument(
          "[csm gemm] x has " + std::to_string(x.shape(-1)) +
          " columns, the product needs " + std::to_string(a));
    }
    // The backward form's vectors run along W's columns, 16 at a time.
    if (w.shape(1) % 16 != 0) {
      throw std::invalid_argument(
          "[csm gemm] w has " + std::to_string(w.shape(1)) +
          " columns, not a multiple of 16");
    }
    auto shape = x.shape();
    shape.back() = w.shape(form == Form::XWt ? 0 : 1);
    return mx::array(
        shape,
        mx::float32,
        std::make_shared<Gemm>(s, form),
        {mx::contiguous(x, false, s), w});
  }

 private:
  Form form_;
};

} // namespace

// `res <- x W^T` (`transpose_w` non-zero) or `x W`, f32, on the CPU.
extern "C" int csm_gemm(
    mlx_array* res,
    const mlx_array x,
    const mlx_array w,
    int transpose_w) {
  return c_entry([&] {
    const auto form = transpose_w != 0 ? Form::XWt : Form::XW;
    mlx_array_set_(
        *res,
        Gemm::make(mlx_array_get_(x), mlx_array_get_(w), form, cpu_stream()));
  });
}

// Whether this process runs `csm_gemm`: x86_64 with AVX2 and FMA, and a
// CBLAS loaded (for products of more than `kKernelRows` rows).
extern "C" int csm_gemm_available() {
  return available() ? 1 : 0;
}
