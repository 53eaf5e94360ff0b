// One-row matmul throughput on this machine: the weight-streaming rates
// quoted in docs/benchmarks.md ("Generation on the CPU: one weight row at a
// time"). Each shape cycles through 768 MB of weights, so they stream from
// memory, not cache. Rows: dot products over each W [n, k] row (the scheme
// of crates/csm-core/cpp/small_matmul.cpp), cols4: multiply-adds over an
// H [k, n] four rows at a time, blasNT / blasNN: OpenBLAS sgemm with one
// row against W^T / H, gemvT: OpenBLAS sgemv. 2 threads for the loops.
//
//   g++ -O3 -mavx2 -mfma -fno-trapping-math -o /tmp/one_row bench/one_row_matmul.cpp \
//     /usr/lib/x86_64-linux-gnu/libopenblas.so.0 -lpthread
//   OPENBLAS_CORETYPE=Haswell /tmp/one_row
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>
// Declared here: the runtime OpenBLAS package ships no cblas.h.
enum {CblasRowMajor=101}; enum {CblasNoTrans=111, CblasTrans=112};
extern "C" { void cblas_sgemm(int,int,int,int,int,int,float,const float*,int,const float*,int,float,float*,int); void cblas_sgemv(int,int,int,int,float,const float*,int,const float*,int,float,float*,int); }
static inline void rows_body(const float* x, const float* w, float* y, size_t k, size_t b, size_t e) {
  for (size_t j = b; j < e; ++j) {
    const float* __restrict wr = w + j * k;
    float acc[16] = {};
    size_t i = 0;
    for (; i + 16 <= k; i += 16)
      for (size_t l = 0; l < 16; ++l) acc[l] += x[i + l] * wr[i + l];
    float s = 0; for (int l = 0; l < 16; ++l) s += acc[l];
    for (; i < k; ++i) s += x[i] * wr[i];
    y[j] = s;
  }
}
static inline void cols_body(const float* x, const float* h, float* y, size_t k, size_t n, size_t b, size_t e) {
  for (size_t j = b; j < e; ++j) y[j] = 0;
  size_t i = 0;
  for (; i + 4 <= k; i += 4) {
    const float* __restrict h0 = h + i * n; const float* __restrict h1 = h0 + n; const float* __restrict h2 = h1 + n; const float* __restrict h3 = h2 + n;
    float x0 = x[i], x1 = x[i+1], x2 = x[i+2], x3 = x[i+3];
    float* __restrict yy = y;
    for (size_t j = b; j < e; ++j) yy[j] += x0*h0[j] + x1*h1[j] + x2*h2[j] + x3*h3[j];
  }
  for (; i < k; ++i) { const float* hr = h + i*n; for (size_t j=b;j<e;++j) y[j] += x[i]*hr[j]; }
}
template <class F> void par(size_t n, int t, F f) {
  std::vector<std::thread> ws; size_t step = (n + t - 1) / t;
  for (int c = 1; c < t; ++c) ws.emplace_back(f, c*step, std::min(n, (c+1)*step));
  f(0, std::min(n, step)); for (auto& w : ws) w.join();
}
int main() {
  size_t shapes[][2] = {{1024, 8192}, {8192, 1024}, {2048, 2048}, {1024,1024}, {2048, 8192}};
  for (auto& sh : shapes) {
    size_t k = sh[0], n = sh[1];
    size_t copies = std::max<size_t>(2, (size_t(768) << 20) / (n * k * 4));
    std::vector<float> x(k), wall(n*k*copies), y(n), y2(n);
    for (auto& v : wall) v = rand() / float(RAND_MAX) - 0.5f;
    size_t cur = 0;
    struct W { std::vector<float>* a; size_t nk; size_t* cur; size_t copies; float* data() { float* p = a->data() + (*cur % copies) * nk; ++*cur; return p; } } w{&wall, n*k, &cur, copies};
    for (auto& v : x) v = rand() / float(RAND_MAX) - 0.5f;
    auto bench = [&](const char* name, auto fn) {
      for (int r = 0; r < 3; ++r) fn();
      auto t0 = std::chrono::steady_clock::now(); int R = 200;
      for (int r = 0; r < R; ++r) fn();
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / R;
      printf("k %5zu n %5zu %-8s %.3f ms  %.1f GB/s\n", k, n, name, s*1e3, n*k*4/s/1e9);
    };
    bench("rows", [&]{ par(n, 2, [&](size_t b, size_t e){ rows_body(x.data(), w.data(), y.data(), k, b, e); }); });
    bench("cols4", [&]{ par(n, 2, [&](size_t b, size_t e){ cols_body(x.data(), w.data(), y.data(), k, n, b, e); }); });
    bench("blasNT", [&]{ cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1, n, k, 1.f, x.data(), k, w.data(), k, 0.f, y2.data(), n); });
    bench("blasNN", [&]{ cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, n, k, 1.f, x.data(), k, w.data(), n, 0.f, y2.data(), n); });
    bench("gemvT", [&]{ cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, 1.f, w.data(), k, x.data(), 1, 0.f, y2.data(), 1); });
  }
}
