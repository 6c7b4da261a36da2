// Profile of the library's native serve tail (puts_jax/csrc/rerank.cc, its row kernels compiled
// in without XLA), on one core, at the bench's serve shapes: how much of the tail's time is
// compute and how much is reading the ranker predictions from memory. bench/tail_profile.py
// builds and runs it; it prints one JSON object.
//
//   cold_ms    every row once, after a write of an eviction buffer: the tail as the serve pass
//              meets it (predictions in DRAM)
//   hot_ms     the first 64 rows (B = 8192: 768 KB, in L2) again and again, B rows in all: the
//              tail's compute alone
//   read_ms    a plain vector sum over the same predictions after the same eviction: the memory
//              floor of any pass that reads them once
//   checksum   FNV-1a of the top-k scores and indices of the last (hot) pass
//   phase_ticks  (built with -DPUTS_JAX_PHASE_CYCLES) time stamp counter ticks per row in each
//              phase of row_avx512 over the hot run: score, bound, compress, insert
//
// Arguments: B N K k reps evict_bytes. Data as bench/workload.py's request_arrays: N_real uniform
// in [0.8 N, N] per row, predictions uniform in [0, 1) (0 past N_real), utility weights on the
// simplex. Buffers are 2 MiB aligned with MADV_HUGEPAGE, as numpy allocates large arrays.
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define PUTS_JAX_NO_FFI
#include "../puts_jax/csrc/rerank.cc"

namespace {

using Clock = std::chrono::steady_clock;

template <typename T>
T* huge_alloc(size_t count) {
  const size_t align = size_t(2) << 20;
  const size_t bytes = (count * sizeof(T) + align - 1) / align * align;
  T* p = static_cast<T*>(std::aligned_alloc(align, bytes));
  if (p == nullptr) {
    std::fprintf(stderr, "tail_profile: out of memory (%zu bytes)\n", bytes);
    std::exit(2);
  }
  madvise(p, bytes, MADV_HUGEPAGE);
  return p;
}

uint64_t lcg(uint64_t& s) {  // Knuth's MMIX LCG: deterministic, fast
  s = s * 6364136223846793005ull + 1442695040888963407ull;
  return s >> 11;
}

float uniform(uint64_t& s) { return static_cast<float>(lcg(s) >> 29) * (1.0f / 16777216.0f); }

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: tail_profile B N K k reps evict_bytes\n");
    return 2;
  }
  const int64_t B = std::atoll(argv[1]), n = std::atoll(argv[2]), K = std::atoll(argv[3]),
                k = std::atoll(argv[4]), reps = std::atoll(argv[5]);
  const size_t evict = std::strtoull(argv[6], nullptr, 10);
  const int64_t hot_rows = std::min<int64_t>(64, B);
  if (B < 1 || n < 1 || K < 1 || k < 1 || reps < 1 || B % hot_rows != 0) {
    std::fprintf(stderr, "tail_profile: need B, N, K, k, reps >= 1 and B a multiple of 64\n");
    return 2;
  }
  float* P = huge_alloc<float>(size_t(B) * n * K);
  bool* M = huge_alloc<bool>(size_t(B) * n);
  float* W = huge_alloc<float>(size_t(B) * K);
  std::vector<float> ov(size_t(B) * k);
  std::vector<int32_t> oi(size_t(B) * k);
  char* E = huge_alloc<char>(evict);
  uint64_t s = 12345;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t real = int64_t(0.8 * n) + int64_t(lcg(s) % uint64_t(n - int64_t(0.8 * n) + 1));
    for (int64_t t = 0; t < n; ++t) {
      M[b * n + t] = t < real;
      for (int64_t j = 0; j < K; ++j) P[(b * n + t) * K + j] = t < real ? uniform(s) : 0.0f;
    }
    float tot = 0.0f;
    for (int64_t j = 0; j < K; ++j) tot += (W[b * K + j] = uniform(s) + 1e-3f);
    for (int64_t j = 0; j < K; ++j) W[b * K + j] /= tot;
  }
  const char* pend = reinterpret_cast<const char*>(P + size_t(B) * n * K);
  auto tail = [&](int64_t b, Prefetcher& pf) {
    return row(P + b * n * K, W + b * K, M + b * n, n, K, k, ov.data() + b * k,
               oi.data() + b * k, pf);
  };
  std::vector<double> cold, hot, read;
  volatile float sink = 0.0f;
  int64_t bad = 0;
  for (int64_t r = 0; r < reps; ++r) {
    std::memset(E, int(r), evict);
    auto t0 = Clock::now();
    Prefetcher pf{reinterpret_cast<const char*>(P), pend};
    for (int64_t b = 0; b < B; ++b) bad += tail(b, pf);
    cold.push_back(seconds_since(t0));

    std::memset(E, int(r) + 1, evict);
    t0 = Clock::now();
    float acc[16] = {};
    const size_t total = size_t(B) * n * K;
    for (size_t i = 0; i + 16 <= total; i += 16)
      for (int l = 0; l < 16; ++l) acc[l] += P[i + l];
    for (int l = 0; l < 16; ++l) sink = sink + acc[l];
    read.push_back(seconds_since(t0));

#ifdef PUTS_JAX_PHASE_CYCLES
    for (auto& x : puts_jax_phase_ticks) x = 0;
#endif
    t0 = Clock::now();
    for (int64_t rep = 0; rep < B / hot_rows; ++rep) {
      Prefetcher hpf{reinterpret_cast<const char*>(P),
                     reinterpret_cast<const char*>(P + hot_rows * n * K)};
      for (int64_t b = 0; b < hot_rows; ++b) bad += tail(b, hpf);
    }
    hot.push_back(seconds_since(t0));
  }
  std::printf("{\"B\": %lld, \"N\": %lld, \"K\": %lld, \"k\": %lld, \"reps\": %lld, "
              "\"bytes_read\": %zu, \"cold_ms\": %.4f, \"hot_ms\": %.4f, \"read_ms\": %.4f, "
              "\"cold_min_ms\": %.4f, \"hot_min_ms\": %.4f, \"read_min_ms\": %.4f",
              (long long)B, (long long)n, (long long)K, (long long)k, (long long)reps,
              size_t(B) * n * K * sizeof(float), median(cold) * 1e3, median(hot) * 1e3,
              median(read) * 1e3, *std::min_element(cold.begin(), cold.end()) * 1e3,
              *std::min_element(hot.begin(), hot.end()) * 1e3,
              *std::min_element(read.begin(), read.end()) * 1e3);
#ifdef PUTS_JAX_PHASE_CYCLES
  std::printf(", \"phase_ticks_per_row\": {\"score\": %.1f, \"bound\": %.1f, \"compress\": %.1f, "
              "\"insert\": %.1f}",
              double(puts_jax_phase_ticks[0]) / B, double(puts_jax_phase_ticks[1]) / B,
              double(puts_jax_phase_ticks[2]) / B, double(puts_jax_phase_ticks[3]) / B);
#endif
  // FNV-1a over the last pass's top-k (scores' bits, indices): both builds must agree
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < ov.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &ov[i], 4);
    h = (h ^ bits) * 1099511628211ull;
    h = (h ^ uint32_t(oi[i])) * 1099511628211ull;
  }
  std::printf(", \"checksum\": \"%016llx\", \"nonfinite\": %lld, \"sink\": %g}\n",
              (unsigned long long)h, (long long)bad, double(sink));
  return 0;
}
