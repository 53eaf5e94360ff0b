// Many-row f32 products on this machine: the kernels of
// crates/csm-core/cpp/gemm_kernels.h (what `csm` trains with on AVX2 CPUs)
// against OpenBLAS's sgemm, for CSM-1B's weight shapes with the rows of a
// 150-frame example (the depth decoder: 8 frames x 32 codebooks = 256
// rows). "forward" is x W^T, "backward" g W (a Linear layer's input
// gradient). Each shape cycles through 8 weights so they come from memory.
// Both sides use 2 threads; ours are split and placed as `parallel_for`
// places them. OpenBLAS is held to one thread while ours run: its idle
// workers spin after each call and would take half of our cores.
//
//   g++ -O3 -std=c++20 -fno-trapping-math -o /tmp/gemm bench/gemm.cpp \
//     /usr/lib/x86_64-linux-gnu/libopenblas.so.0 -lpthread
//   OPENBLAS_CORETYPE=Haswell /tmp/gemm
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <thread>
#include <vector>

#include "../crates/csm-core/cpp/gemm_kernels.h"

// Declared here: the runtime OpenBLAS package ships no cblas.h.
enum { CblasRowMajor = 101 };
enum { CblasNoTrans = 111, CblasTrans = 112 };
extern "C" {
void cblas_sgemm(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
void openblas_set_num_threads(int);
char* openblas_get_corename(void);
}

using namespace csm_gemm_kernels;
using Clock = std::chrono::steady_clock;

// f(half) on a second thread kept off this thread's CPU, f(0) here.
template <class F>
void two_threads(F f) {
  std::thread t([&] { f(1); });
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(sched_getcpu() == 0 ? 1 : 0, &one);
  pthread_setaffinity_np(t.native_handle(), sizeof one, &one);
  f(0);
  t.join();
}

void ours_forward(const float* x, const float* w, float* y, size_t m, size_t c, size_t r, float* xt, float* yt) {
  const size_t panels = (m + kPanelX - 1) / kPanelX;
  two_threads([&](int h) { pack_x16(x, xt, m, c, h ? panels / 2 : 0, h ? panels : panels / 2); });
  const size_t half = (r / 2 + kPanel6 - 1) / kPanel6 * kPanel6;
  two_threads([&](int h) { forward_range(w, xt, yt, y, m, c, r, h ? half : 0, h ? r : half); });
}

void ours_backward(const float* g, const float* w, float* y, size_t m, size_t r, size_t c, float* gp) {
  const size_t panels = (m + kPanel6 - 1) / kPanel6;
  two_threads([&](int h) { pack_x6(g, gp, m, r, h ? panels / 2 : 0, h ? panels : panels / 2); });
  const size_t half = (c / 2 + 15) / 16 * 16;
  two_threads([&](int h) {
    std::vector<float> block(kBackwardRows * kBackwardCols);
    backward_range(gp, w, y, m, r, c, h ? half : 0, h ? c : half, block.data());
  });
}

double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int main() {
  struct Shape {
    const char* name;
    size_t m, r, c; // x [m, c] -> [m, r] forward; W [r, c]
  };
  const Shape shapes[] = {
      {"q_proj/o_proj", 150, 2048, 2048},
      {"k_proj/v_proj", 150, 512, 2048},
      {"gate/up_proj", 150, 8192, 2048},
      {"down_proj", 150, 2048, 8192},
      {"decoder q/o", 256, 1024, 1024},
      {"decoder gate/up", 256, 8192, 1024},
      {"decoder down", 256, 1024, 8192},
  };
  std::printf("OpenBLAS kernels: %s; GFLOP/s, best of 5 rounds of 8 weights\n", openblas_get_corename());
  std::printf("%-16s %5s %5s %5s | %8s %8s %6s | %8s %8s %6s | %s\n", "shape", "m", "r", "c", "fwd blas", "ours", "ratio",
              "bwd blas", "ours", "ratio", "max rel diff");
  for (const auto& s : shapes) {
    std::vector<float> x(s.m * s.c), g(s.m * s.r), y1(s.m * s.r), y2(s.m * s.r), d1(s.m * s.c), d2(s.m * s.c);
    std::vector<float> xt(((s.m + 15) / 16 * 16) * s.c), yt(((s.m + 15) / 16 * 16) * s.r), gp(((s.m + 5) / 6 * 6) * s.r);
    unsigned seed = 1;
    auto rnd = [&] { seed = seed * 1664525u + 1013904223u; return (seed >> 8) / 16777216.0f - 0.5f; };
    for (auto& v : x) v = rnd();
    for (auto& v : g) v = rnd();
    std::vector<std::vector<float>> ws(8, std::vector<float>(s.r * s.c));
    for (auto& w : ws) for (auto& v : w) v = rnd();
    const double flop = 2.0 * s.m * s.r * s.c * 8;
    double bf = 1e9, bb = 1e9, of = 1e9, ob = 1e9;
    for (int round = 0; round < 5; ++round) {
      openblas_set_num_threads(2);
      auto t0 = Clock::now();
      for (auto& w : ws) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.m, s.r, s.c, 1.f, x.data(), s.c, w.data(), s.c, 0.f, y1.data(), s.r);
      auto t1 = Clock::now();
      for (auto& w : ws) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.m, s.c, s.r, 1.f, g.data(), s.r, w.data(), s.c, 0.f, d1.data(), s.c);
      auto t2 = Clock::now();
      openblas_set_num_threads(1);
      usleep(300000); // OpenBLAS's workers stop spinning
      auto t3 = Clock::now();
      for (auto& w : ws) ours_forward(x.data(), w.data(), y2.data(), s.m, s.c, s.r, xt.data(), yt.data());
      auto t4 = Clock::now();
      for (auto& w : ws) ours_backward(g.data(), w.data(), d2.data(), s.m, s.r, s.c, gp.data());
      auto t5 = Clock::now();
      bf = std::min(bf, seconds(t0, t1));
      bb = std::min(bb, seconds(t1, t2));
      of = std::min(of, seconds(t3, t4));
      ob = std::min(ob, seconds(t4, t5));
    }
    double diff = 0, scale = 0;
    for (size_t i = 0; i < y1.size(); ++i) { diff = std::max(diff, (double)std::fabs(y1[i] - y2[i])); scale = std::max(scale, (double)std::fabs(y1[i])); }
    for (size_t i = 0; i < d1.size(); ++i) { diff = std::max(diff, (double)std::fabs(d1[i] - d2[i])); scale = std::max(scale, (double)std::fabs(d1[i])); }
    std::printf("%-16s %5zu %5zu %5zu | %8.0f %8.0f %5.2fx | %8.0f %8.0f %5.2fx | %.1e\n", s.name, s.m, s.r, s.c,
                flop / bf / 1e9, flop / of / 1e9, bf / of, flop / bb / 1e9, flop / ob / 1e9, bb / ob, diff / scale);
  }
}
