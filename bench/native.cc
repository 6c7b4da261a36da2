// Experimental exact row-wise top-k for XLA:CPU through the XLA FFI (bench/native.py builds
// and registers it). Same contract as lax.top_k on f32[B, N]: the k largest of each row, best
// first, ties to the lower index, ordered as XLA orders floats (by the int key below, so
// -0.0 < 0.0).
//
// Why it is faster than XLA's TopK runtime (std::partial_sort of an index array through an
// indirect comparator, ~5 us a row of 500): a vectorizable pass computes int keys and group
// maxima; the k-th largest group maximum (nth_element on 2k values) bounds the k-th largest key
// from below, so one more pass keeps only the few keys at or above it (a superset of the top k,
// ties included), and partial_sort orders those by (key desc, index asc). Exact by construction.
#include <algorithm>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <chrono>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline int32_t key_of(float v) {
  int32_t b;
  std::memcpy(&b, &v, 4);
  return b < 0 ? (b ^ 0x7fffffff) : b;
}

struct Cand {
  int32_t key;
  int32_t idx;
};

inline bool better(const Cand& a, const Cand& b) {
  return a.key != b.key ? a.key > b.key : a.idx < b.idx;
}

// Top k of one row given its int keys: writes k (value, index) pairs best first; slots past the
// number of candidates (only when n < k) are left to the caller. Returns how many were written.
int64_t select_top_k(const float* x, const int32_t* keys, int64_t n, int64_t k,
                     std::vector<int32_t>& gmax, std::vector<Cand>& buf, float* out_v,
                     int32_t* out_i) {
  // Lower bound of the k-th largest key: split the row into G >= k groups; the k largest group
  // maxima are k distinct elements, so the k-th largest group maximum t0 is <= the k-th largest
  // key. Every key >= t0 is a candidate (a superset of the top k, ties included).
  int32_t t0 = INT32_MIN;
  const int64_t gs = std::max<int64_t>(1, n / (2 * k));
  const int64_t groups = (n + gs - 1) / gs;
  if (groups >= k && gs > 1) {
    gmax.resize(groups);
    for (int64_t g = 0; g < groups; ++g) {
      int32_t m = INT32_MIN;
      const int64_t lo = g * gs, hi = std::min(n, lo + gs);
      for (int64_t i = lo; i < hi; ++i) m = std::max(m, keys[i]);
      gmax[g] = m;
    }
    std::nth_element(gmax.begin(), gmax.begin() + (groups - k), gmax.end());
    t0 = gmax[groups - k];
  }
  buf.resize(n);
  int64_t cnt = 0;
  for (int64_t i = 0; i < n; ++i) {  // branchless compaction
    buf[cnt] = {keys[i], (int32_t)i};
    cnt += keys[i] >= t0;
  }
  const int64_t m = std::min<int64_t>(k, cnt);
  if (cnt <= 64) {  // insertion sort of the few candidates: no heap, few mispredicts
    for (int64_t a = 1; a < cnt; ++a) {
      Cand c = buf[a];
      int64_t b = a;
      for (; b > 0 && better(c, buf[b - 1]); --b) buf[b] = buf[b - 1];
      buf[b] = c;
    }
  } else {
    std::partial_sort(buf.begin(), buf.begin() + m, buf.begin() + cnt, better);
  }
  for (int64_t j = 0; j < m; ++j) {
    out_v[j] = x[buf[j].idx];
    out_i[j] = buf[j].idx;
  }
  return m;
}

ffi::Error TopKImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> vals,
                    ffi::ResultBuffer<ffi::S32> idx, int64_t k) {
  auto dims = x.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("bench_topk: expected f32[B, N]");
  const int64_t rows = dims[0], n = dims[1];
  if (k < 1 || k > n) return ffi::Error::InvalidArgument("bench_topk: need 1 <= k <= N");
  std::vector<int32_t> keys(n), gmax;
  std::vector<Cand> buf;
  const float* in = x.typed_data();
  float* ov = vals->typed_data();
  int32_t* oi = idx->typed_data();
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = in + r * n;
    for (int64_t i = 0; i < n; ++i) keys[i] = key_of(row[i]);
    select_top_k(row, keys.data(), n, k, gmax, buf, ov + r * k, oi + r * k);
  }
  return ffi::Error::Success();
}

// u[i] = preds[i, :] . w for real candidates (mask), -inf elsewhere and for NaN/inf scores
// (counted in the return value); keys[i] = key_of(u[i]). A compile-time K lets the compiler
// unroll the dot and vectorize across candidates.
template <int K>
int32_t scores(const float* pr, const float* wr, const bool* mr, int64_t n, float* u,
               int32_t* keys) {
  float w[K];
  for (int j = 0; j < K; ++j) w[j] = wr[j];
  const float neg_inf = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
#ifdef __AVX512F__
  // 16 candidates at a time: K gathers with stride K (the [N, K] rows are interleaved), then
  // multiply and add in the same order as the scalar loop (no FMA: matches XLA bit for bit).
  const __m512i lane = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                            11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(K));
  for (; i + 16 <= n; i += 16) {
    const float* base = pr + i * K;
    __m512 acc = _mm512_mul_ps(_mm512_i32gather_ps(lane, base, 4), _mm512_set1_ps(w[0]));
    for (int j = 1; j < K; ++j)
      acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_i32gather_ps(lane, base + j, 4),
                                             _mm512_set1_ps(w[j])));
    _mm512_storeu_ps(u + i, acc);
  }
#endif
  for (; i < n; ++i) {
    float acc = pr[i * K] * w[0];
    for (int j = 1; j < K; ++j) acc += pr[i * K + j] * w[j];
    u[i] = acc;
  }
  int32_t nbad = 0;
  for (int64_t t = 0; t < n; ++t) {
    const bool fin = std::isfinite(u[t]);
    nbad += mr[t] && !fin;
    u[t] = (mr[t] && fin) ? u[t] : neg_inf;
    keys[t] = key_of(u[t]);
  }
  return nbad;
}

int32_t scores_any(const float* pr, const float* wr, const bool* mr, int64_t n, int64_t K,
                   float* u, int32_t* keys) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  int32_t nbad = 0;
  for (int64_t i = 0; i < n; ++i) {
    float acc = pr[i * K] * wr[0];
    for (int64_t j = 1; j < K; ++j) acc += pr[i * K + j] * wr[j];
    const bool fin = std::isfinite(acc);
    nbad += mr[i] && !fin;
    u[i] = (mr[i] && fin) ? acc : neg_inf;
  }
  for (int64_t i = 0; i < n; ++i) keys[i] = key_of(u[i]);
  return nbad;
}

// Fused re-weight + masked top-k (the tail of the serve pass) reading preds once:
// u[n] = preds[n, :] . w for real candidates (mask), NaN/inf scores counted in bad and never
// ranked; outputs best first, index -1 and score -inf past the real finite candidates.
ffi::Error RerankImpl(ffi::Buffer<ffi::F32> preds, ffi::Buffer<ffi::F32> w,
                      ffi::Buffer<ffi::PRED> mask, ffi::ResultBuffer<ffi::F32> vals,
                      ffi::ResultBuffer<ffi::S32> idx, ffi::ResultBuffer<ffi::S32> bad,
                      int64_t k) {
  auto d = preds.dimensions();
  if (d.size() != 3) return ffi::Error::InvalidArgument("bench_rerank: expected f32[B, N, K]");
  const int64_t rows = d[0], n = d[1], K = d[2];
  if (k < 1) return ffi::Error::InvalidArgument("bench_rerank: need k >= 1");
  std::vector<float> u(n);
  std::vector<int32_t> keys(n), gmax;
  std::vector<Cand> buf;
  const float* P = preds.typed_data();
  const float* Wt = w.typed_data();
  const bool* M = mask.typed_data();
  float* ov = vals->typed_data();
  int32_t* oi = idx->typed_data();
  int32_t* ob = bad->typed_data();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int32_t neg_inf_key = key_of(neg_inf);
  for (int64_t r = 0; r < rows; ++r) {
    const float* pr = P + r * n * K;
    const float* wr = Wt + r * K;
    const bool* mr = M + r * n;
    const int32_t nbad = K == 6 ? scores<6>(pr, wr, mr, n, u.data(), keys.data())
                       : K == 4 ? scores<4>(pr, wr, mr, n, u.data(), keys.data())
                       : K == 8 ? scores<8>(pr, wr, mr, n, u.data(), keys.data())
                                : scores_any(pr, wr, mr, n, K, u.data(), keys.data());
    ob[r] = nbad;
    float* v = ov + r * k;
    int32_t* t = oi + r * k;
    const int64_t m = select_top_k(u.data(), keys.data(), n, std::min(k, n), gmax, buf, v, t);
    for (int64_t j = 0; j < k; ++j) {
      if (j >= m) { v[j] = neg_inf; t[j] = -1; }
      else if (key_of(v[j]) == neg_inf_key) { t[j] = -1; }
    }
  }
  return ffi::Error::Success();
}

// Greedy policy of every lambda for a chunk of logged rows (the sweep's per-lambda select), in
// one pass over Q: for each row, a running first-argmax over actions with the L lambdas in the
// vector lanes (s_l = sum_j q[a, j] lam[l, j]; strict > keeps the lowest index on ties). A row
// with any non-finite Q takes the fallback action for every lambda (then some q . lam is
// non-finite for every lambda, as in kernels.select_from_scores). Outputs what the estimators
// need: pi[b, l] = consistent[b, a*] and qhat(x, pi)[b, l, :] = q[b, a*, :] (row-major per
// row: writing [L, B] instead made every row touch L scattered cache lines, 40x slower).
ffi::Error SweepSelectImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> lams,
                           ffi::Buffer<ffi::PRED> consistent, ffi::ResultBuffer<ffi::F32> pi,
                           ffi::ResultBuffer<ffi::F32> qpi, int64_t fallback) {
  auto d = q.dimensions();
  auto dl = lams.dimensions();
  if (d.size() != 3 || dl.size() != 2 || dl[1] != d[2])
    return ffi::Error::InvalidArgument("bench_sweep_select: expected q f32[B, A, J], lams f32[L, J]");
  const int64_t B = d[0], A = d[1], J = d[2], L = dl[0];
  if (fallback < 0 || fallback >= A) return ffi::Error::InvalidArgument("bench_sweep_select: fallback");
  std::vector<float> lamT(J * L), best(L), sc(L);
  std::vector<int32_t> idx(L);
  const float* lp = lams.typed_data();
  for (int64_t l = 0; l < L; ++l)
    for (int64_t j = 0; j < J; ++j) lamT[j * L + l] = lp[l * J + j];
  const float* Q = q.typed_data();
  const bool* C = consistent.typed_data();
  float* P = pi->typed_data();
  float* QP = qpi->typed_data();
  for (int64_t b = 0; b < B; ++b) {
    const float* qb = Q + b * A * J;
    bool fin = true;
    for (int64_t i = 0; i < A * J; ++i) fin &= std::isfinite(qb[i]);
    if (fin) {
      for (int64_t l = 0; l < L; ++l) { best[l] = -std::numeric_limits<float>::infinity(); idx[l] = 0; }
      for (int64_t a = 0; a < A; ++a) {
        const float* qa = qb + a * J;
        // every innermost loop runs over lambdas (contiguous, vectorized with masked blends)
        for (int64_t l = 0; l < L; ++l) sc[l] = qa[0] * lamT[l];
        for (int64_t j = 1; j < J; ++j)
          for (int64_t l = 0; l < L; ++l) sc[l] += qa[j] * lamT[j * L + l];
        const int32_t ai = (int32_t)a;
        for (int64_t l = 0; l < L; ++l) {
          const bool gt = sc[l] > best[l];
          best[l] = gt ? sc[l] : best[l];
          idx[l] = gt ? ai : idx[l];
        }
      }
    } else {
      for (int64_t l = 0; l < L; ++l) idx[l] = (int32_t)fallback;
    }
    const bool* cb = C + b * A;
    for (int64_t l = 0; l < L; ++l) {
      const int32_t a = idx[l];
      P[b * L + l] = cb[a] ? 1.0f : 0.0f;  // row-major per row: contiguous stores
      for (int64_t j = 0; j < J; ++j) QP[(b * L + l) * J + j] = qb[a * J + j];
    }
  }
  return ffi::Error::Success();
}

// The latency suite's in-program hand-off from the agent process: wait until the shared-memory
// channel (bench/agent_worker.py: header i64[8] with REQ at 0 and RESP at 1, weights f32[B, K]
// at weights_addr) has answered the request the server posted (RESP == REQ), then copy the
// weights out. ``after`` (the ranker's predictions) is an operand only to order the wait after
// the ranker inside one program: the ranker and the agent overlap, and the re-weighting reads
// the agent's weights without a second program dispatch. Spins with pause; gives up with an
// error after timeout_ms so a dead agent cannot hang the benchmark.
ffi::Error AwaitWeightsImpl(ffi::AnyBuffer after, ffi::ResultBuffer<ffi::F32> w, int64_t hdr_addr,
                            int64_t weights_addr, int64_t timeout_ms) {
  (void)after;
  const int64_t* hdr = reinterpret_cast<const int64_t*>(hdr_addr);
  const int64_t req = __atomic_load_n(hdr + 0, __ATOMIC_ACQUIRE);
  int64_t spins = 0;
  auto t0 = std::chrono::steady_clock::now();
  while (__atomic_load_n(hdr + 1, __ATOMIC_ACQUIRE) != req) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    if ((++spins & 0xffff) == 0 &&
        std::chrono::steady_clock::now() - t0 > std::chrono::milliseconds(timeout_ms))
      return ffi::Error(ffi::ErrorCode::kDeadlineExceeded, "bench_await_weights: agent timed out");
  }
  auto d = w->dimensions();
  int64_t n = 1;
  for (auto x : d) n *= x;
  std::memcpy(w->typed_data(), reinterpret_cast<const float*>(weights_addr), n * sizeof(float));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchSweepSelect, SweepSelectImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("fallback"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchRerank, RerankImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("k"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchTopK, TopKImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("k"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchAwaitWeights, AwaitWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("hdr_addr")
                                  .Attr<int64_t>("weights_addr")
                                  .Attr<int64_t>("timeout_ms"));
