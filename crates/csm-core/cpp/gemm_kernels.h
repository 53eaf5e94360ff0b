// AVX2 + FMA kernels of `gemm.cpp`: f32 products of many rows with a
// weight kept in its stored layout, for training on the CPU. No MLX here,
// so `bench/gemm.cpp` measures exactly these against OpenBLAS.
//
// Two forms, both with the weight `W [r, c]` row-major as stored:
//
// - `y = x W^T` (a Linear layer's forward, x [m, c] -> y [m, r]). The
//   reduction runs along W's rows, so each tile broadcasts W elements
//   straight from 6 rows (a k-block of 6 rows stays in L1) against two
//   vectors of 16 x rows, packed once per call k-major. The weight, the big
//   operand, is read where it lies: no packed copy of it is made. The tile
//   leaves y transposed (6 outputs of 16 rows), so results go to a
//   scratch `yt [r, m16]` with vector stores and are transposed into y at
//   the end, one pass over the small output.
// - `y = x W` (the input gradient of a Linear layer, x [m, r] -> y [m, c]).
//   The reduction runs down W's columns, so blocks of W are copied row
//   segment by row segment (a plain copy, no transposition) into a
//   contiguous buffer that stays in L2, and each tile broadcasts 6 x
//   values (packed n-major in panels of 6 rows) against two vectors of a
//   W row.
//
// Both keep 12 accumulators (6 x 2 vectors) in registers, with 6
// broadcasts and 2 vector loads per 12 FMAs from L1 or L2. OpenBLAS's
// Haswell kernel packs both operands of every call, the weight included
// (the step's weights twice: forward and backward). Measured on the
// project's 2-core machine for the backbone's shapes with 150 rows:
// 201-232 GFLOP/s against OpenBLAS's 183-206 (bench/gemm.cpp,
// docs/benchmarks.md); for the depth decoder's with 256 rows, 0.96-1.08x
// OpenBLAS, which gains with more rows where these do not.

#pragma once

#if defined(__x86_64__)

#include <immintrin.h>

#include <algorithm>
#include <cstddef>

namespace csm_gemm_kernels {

#define CSM_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline
#define CSM_AVX2 __attribute__((target("avx2,fma")))

// Rows of x per packed panel in `y = x W^T` (two vectors).
inline constexpr size_t kPanelX = 16;
// Rows of x per packed panel in `y = x W`, and W rows per forward tile.
inline constexpr size_t kPanel6 = 6;
// Forward: the reduction is cut into blocks so that 6 W rows of a block
// stay in L1 and the packed x of a block (all rows) in half of a 1 MB L2:
// 768 for 150 rows, 512 for 256.
inline size_t forward_block(size_t padded_rows) {
  const size_t fit = (size_t{128} << 10) / std::max<size_t>(1, padded_rows);
  return std::clamp<size_t>(fit / 64 * 64, 128, 1024);
}
// Backward: W is copied in blocks of this many rows and columns (128 KB,
// in L2), each used by every panel of x before the next.
inline constexpr size_t kBackwardRows = 512;
inline constexpr size_t kBackwardCols = 64;

// Transposes the 8 x 8 block at `src` (rows `lds` apart) into `dst` (rows
// `ldd` apart).
CSM_AVX2_INLINE void transpose8(
    const float* src,
    size_t lds,
    float* dst,
    size_t ldd) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm256_loadu_ps(src + i * lds);
  }
  __m256 t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m256 s[8];
  for (int i = 0; i < 2; ++i) {
    const int a = 4 * i;
    s[a] = _mm256_shuffle_ps(t[a], t[a + 2], 0x44);
    s[a + 1] = _mm256_shuffle_ps(t[a], t[a + 2], 0xEE);
    s[a + 2] = _mm256_shuffle_ps(t[a + 1], t[a + 3], 0x44);
    s[a + 3] = _mm256_shuffle_ps(t[a + 1], t[a + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(s[i], s[i + 4], 0x20));
    _mm256_storeu_ps(
        dst + (i + 4) * ldd, _mm256_permute2f128_ps(s[i], s[i + 4], 0x31));
  }
}

// Panels [pb, pe) of x [m, k] as `xt[p][k][16]` (rows past m are zeros).
CSM_AVX2 inline void pack_x16(
    const float* x,
    float* xt,
    size_t m,
    size_t k,
    size_t pb,
    size_t pe) {
  for (size_t p = pb; p < pe; ++p) {
    const size_t row = p * kPanelX;
    float* dst = xt + row * k;
    if (row + kPanelX <= m && k % 8 == 0) {
      for (size_t i = 0; i < k; i += 8) {
        transpose8(x + row * k + i, k, dst + i * kPanelX, kPanelX);
        transpose8(x + (row + 8) * k + i, k, dst + i * kPanelX + 8, kPanelX);
      }
      continue;
    }
    for (size_t i = 0; i < k; ++i) {
      for (size_t l = 0; l < kPanelX; ++l) {
        dst[i * kPanelX + l] = row + l < m ? x[(row + l) * k + i] : 0.0f;
      }
    }
  }
}

// Panels [pb, pe) of x [m, r] as `xp[p][r][6]` (rows past m are zeros).
CSM_AVX2 inline void pack_x6(
    const float* x,
    float* xp,
    size_t m,
    size_t r,
    size_t pb,
    size_t pe) {
  const __m256i six = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
  alignas(32) float block[8 * 8];
  for (size_t p = pb; p < pe; ++p) {
    const size_t row = p * kPanel6;
    const size_t rows = std::min(kPanel6, m - row);
    float* dst = xp + row * r;
    size_t i = 0;
    // Eight columns of the 6 rows at a time: transposed through a block
    // whose last two rows are zeros, then 6 values per column.
    for (; i + 8 <= r; i += 8) {
      for (size_t l = 0; l < 8; ++l) {
        const __m256 v = l < rows ? _mm256_loadu_ps(x + (row + l) * r + i)
                                  : _mm256_setzero_ps();
        _mm256_store_ps(block + l * 8, v);
      }
      for (size_t l = 0; l < 8; ++l) {
        // Columns of `block` become rows: column l, 6 of its 8 values.
        alignas(32) float col[8];
        for (size_t j = 0; j < 8; ++j) {
          col[j] = block[j * 8 + l];
        }
        _mm256_maskstore_ps(dst + (i + l) * kPanel6, six, _mm256_load_ps(col));
      }
    }
    for (; i < r; ++i) {
      for (size_t l = 0; l < kPanel6; ++l) {
        dst[i * kPanel6 + l] = l < rows ? x[(row + l) * r + i] : 0.0f;
      }
    }
  }
}

// One forward tile: yt[j][0..8 NV) (+)= sum_i w[j][i] xt[i][..] for NR
// weight rows j, over `kc` reduction steps.
template <int NR, int NV>
CSM_AVX2_INLINE void forward_tile(
    const float* w,
    size_t ldw,
    const float* xt,
    size_t kc,
    float* yt,
    size_t ldyt,
    bool add) {
  __m256 acc[NR][NV];
  for (int j = 0; j < NR; ++j) {
    for (int v = 0; v < NV; ++v) {
      acc[j][v] = _mm256_setzero_ps();
    }
  }
  for (size_t i = 0; i < kc; ++i) {
    __m256 xv[NV];
    for (int v = 0; v < NV; ++v) {
      xv[v] = _mm256_loadu_ps(xt + i * kPanelX + v * 8);
    }
    for (int j = 0; j < NR; ++j) {
      const __m256 b = _mm256_broadcast_ss(w + j * ldw + i);
      for (int v = 0; v < NV; ++v) {
        acc[j][v] = _mm256_fmadd_ps(b, xv[v], acc[j][v]);
      }
    }
  }
  for (int j = 0; j < NR; ++j) {
    for (int v = 0; v < NV; ++v) {
      float* out = yt + j * ldyt + v * 8;
      const __m256 a =
          add ? _mm256_add_ps(acc[j][v], _mm256_loadu_ps(out)) : acc[j][v];
      _mm256_storeu_ps(out, a);
    }
  }
}

template <int NV>
CSM_AVX2_INLINE void forward_rows(
    size_t nr,
    const float* w,
    size_t ldw,
    const float* xt,
    size_t kc,
    float* yt,
    size_t ldyt,
    bool add) {
  switch (nr) {
    case 6: forward_tile<6, NV>(w, ldw, xt, kc, yt, ldyt, add); break;
    case 5: forward_tile<5, NV>(w, ldw, xt, kc, yt, ldyt, add); break;
    case 4: forward_tile<4, NV>(w, ldw, xt, kc, yt, ldyt, add); break;
    case 3: forward_tile<3, NV>(w, ldw, xt, kc, yt, ldyt, add); break;
    case 2: forward_tile<2, NV>(w, ldw, xt, kc, yt, ldyt, add); break;
    case 1: forward_tile<1, NV>(w, ldw, xt, kc, yt, ldyt, add); break;
    default: break;
  }
}

// y[:, rb..re) = x W[rb..re)^T for x [m, c] packed by `pack_x16` into xt,
// W [r, c], y [m, r], through the scratch yt [r, m rounded up to 16].
CSM_AVX2 inline void forward_range(
    const float* w,
    const float* xt,
    float* yt,
    float* y,
    size_t m,
    size_t c,
    size_t r,
    size_t rb,
    size_t re) {
  const size_t panels = (m + kPanelX - 1) / kPanelX;
  const size_t ldyt = panels * kPanelX;
  const size_t block = forward_block(ldyt);
  for (size_t k0 = 0; k0 < c; k0 += block) {
    const size_t kc = std::min(block, c - k0);
    const bool add = k0 > 0;
    for (size_t j = rb; j < re; j += kPanel6) {
      const size_t nr = std::min(kPanel6, re - j);
      const float* wr = w + j * c + k0;
      // The next rows' block on its way from memory while this one runs
      // (each is used by every panel: 10 for 150 rows).
      const size_t next = std::min(kPanel6, re - std::min(re, j + kPanel6));
      for (size_t l = 0; l < next; ++l) {
        for (size_t i = 0; i < kc; i += 16) {
          _mm_prefetch(
              reinterpret_cast<const char*>(wr + (kPanel6 + l) * c + i),
              _MM_HINT_T0);
        }
      }
      for (size_t p = 0; p < panels; ++p) {
        const float* xp = xt + p * kPanelX * c + k0 * kPanelX;
        float* out = yt + j * ldyt + p * kPanelX;
        if (m - p * kPanelX > 8) {
          forward_rows<2>(nr, wr, c, xp, kc, out, ldyt, add);
        } else {
          forward_rows<1>(nr, wr, c, xp, kc, out, ldyt, add);
        }
      }
    }
  }
  size_t j = rb;
  for (; j + 8 <= re; j += 8) {
    size_t i = 0;
    for (; i + 8 <= m; i += 8) {
      transpose8(yt + j * ldyt + i, ldyt, y + i * r + j, r);
    }
    for (; i < m; ++i) {
      for (size_t l = 0; l < 8; ++l) {
        y[i * r + j + l] = yt[(j + l) * ldyt + i];
      }
    }
  }
  for (; j < re; ++j) {
    for (size_t i = 0; i < m; ++i) {
      y[i * r + j] = yt[j * ldyt + i];
    }
  }
}

// One backward tile: y[i][0..16) (+)= sum_n xp[n][i] wp[n][0..16) for MR
// rows i, over `nb` reduction steps.
template <int MR>
CSM_AVX2_INLINE void backward_tile(
    const float* xp,
    const float* wp,
    size_t ldwp,
    size_t nb,
    float* y,
    size_t ldy,
    bool add) {
  __m256 acc[MR][2];
  for (int i = 0; i < MR; ++i) {
    acc[i][0] = _mm256_setzero_ps();
    acc[i][1] = _mm256_setzero_ps();
  }
  for (size_t n = 0; n < nb; ++n) {
    const __m256 w0 = _mm256_loadu_ps(wp + n * ldwp);
    const __m256 w1 = _mm256_loadu_ps(wp + n * ldwp + 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 b = _mm256_broadcast_ss(xp + n * kPanel6 + i);
      acc[i][0] = _mm256_fmadd_ps(b, w0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(b, w1, acc[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    float* out = y + i * ldy;
    if (add) {
      acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_loadu_ps(out));
      acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_loadu_ps(out + 8));
    }
    _mm256_storeu_ps(out, acc[i][0]);
    _mm256_storeu_ps(out + 8, acc[i][1]);
  }
}

// y[:, cb..ce) = x W[:, cb..ce) for x [m, r] packed by `pack_x6` into xp,
// W [r, c], y [m, c]; cb and ce multiples of 16. `wp`: kBackwardRows x
// kBackwardCols floats of this thread's own.
CSM_AVX2 inline void backward_range(
    const float* xp,
    const float* w,
    float* y,
    size_t m,
    size_t r,
    size_t c,
    size_t cb,
    size_t ce,
    float* wp) {
  const size_t panels = (m + kPanel6 - 1) / kPanel6;
  for (size_t n0 = 0; n0 < r; n0 += kBackwardRows) {
    const size_t nb = std::min(kBackwardRows, r - n0);
    const bool add = n0 > 0;
    for (size_t c0 = cb; c0 < ce; c0 += kBackwardCols) {
      const size_t cw = std::min(kBackwardCols, ce - c0);
      for (size_t n = 0; n < nb; ++n) {
        const float* src = w + (n0 + n) * c + c0;
        float* dst = wp + n * kBackwardCols;
        for (size_t i = 0; i < cw; i += 8) {
          _mm256_storeu_ps(dst + i, _mm256_loadu_ps(src + i));
        }
      }
      for (size_t p = 0; p < panels; ++p) {
        const size_t mr = std::min(kPanel6, m - p * kPanel6);
        const float* xb = xp + p * kPanel6 * r + n0 * kPanel6;
        float* out = y + p * kPanel6 * c + c0;
        for (size_t i = 0; i < cw; i += 16) {
          switch (mr) {
            case 6: backward_tile<6>(xb, wp + i, kBackwardCols, nb, out + i, c, add); break;
            case 5: backward_tile<5>(xb, wp + i, kBackwardCols, nb, out + i, c, add); break;
            case 4: backward_tile<4>(xb, wp + i, kBackwardCols, nb, out + i, c, add); break;
            case 3: backward_tile<3>(xb, wp + i, kBackwardCols, nb, out + i, c, add); break;
            case 2: backward_tile<2>(xb, wp + i, kBackwardCols, nb, out + i, c, add); break;
            case 1: backward_tile<1>(xb, wp + i, kBackwardCols, nb, out + i, c, add); break;
            default: break;
          }
        }
      }
    }
  }
}

#undef CSM_AVX2_INLINE
#undef CSM_AVX2

} // namespace csm_gemm_kernels

#endif
