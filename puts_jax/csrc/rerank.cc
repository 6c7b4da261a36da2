// puts_jax native serve tail for XLA:CPU: an XLA FFI custom call that puts_jax/native.py builds
// with the system C++ compiler on first use and registers. One pass over each request's ranker
// predictions: re-weight every candidate (u[n] = preds[n, :] . w with XLA:CPU's roundings, see
// score_scalar, so the scores equal kernels._scores' bit for bit), drop padding and NaN/inf
// scores (counting the real ones), and keep the k best, ties to the lower index (the order of
// puts_jax.reference.masked_top_k; -0.0 is canonicalized to +0.0, so the two tie).
//
// With AVX-512, K <= 8 and k <= 32 (row_avx512): 16 candidates are scored at once (K vector
// loads, a transpose by two-source permutes into K vectors of 16), a chunk of up to 512 scores
// goes to an L1 buffer with 32 group maxima, whose k-th largest bounds the chunk's k-th best from
// below; only the scores at or above the bound (about 40 of 500 random ones) are inserted into a
// branch-free sorted buffer of int64 keys. Otherwise (row_scalar): candidates in index order,
// each inserted into a sorted buffer if it beats the current k-th.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include <optional>
#include <string>

// -DPUTS_JAX_PHASE_CYCLES (bench/tail_profile.cc only): time stamp counter ticks spent in each
// phase of row_avx512, summed over rows: scoring, the chunk's bound, the compress, the inserts.
#ifdef PUTS_JAX_PHASE_CYCLES
#include <x86intrin.h>
uint64_t puts_jax_phase_ticks[4];
#define PHASE_MARK(v) const uint64_t v = __rdtsc()
#define PHASE_ADD(i, a, b) puts_jax_phase_ticks[i] += (b) - (a)
#else
#define PHASE_MARK(v)
#define PHASE_ADD(i, a, b)
#endif

#ifndef PUTS_JAX_NO_FFI  // -DPUTS_JAX_NO_FFI: the row kernels alone (micro-benchmarks)
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
#endif

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Software prefetch of the predictions ahead of the reads, into L2: a cursor over the whole preds
// array that every phase of a row advances at a steady rate, so the memory system keeps
// streaming while a row's selection (bound, compress, inserts: half the row's compute) runs.
// Scoring reads 2K lines per 32 candidates and prefetches K of them ahead; each selection step
// prefetches one line. Measured at B = 8192, N = 500, K = 6 from DRAM on the 2-core CPU
// (bench/tail_profile.py): 9.7-10.0 ms when scoring prefetched 2K + 4 lines a step and the
// cursor's lead was capped at 16 KB (it reached the cap while scoring, so the selection issued
// nothing and added its whole compute), against 7.9-8.5 ms now; a plain read is 6.6-7.0 ms.
// A cursor that falls behind the reads (few inserts, short rows) restarts kLead bytes ahead.
struct Prefetcher {
  const char* p;    // next line to prefetch
  const char* end;  // one past the last byte of preds
  static constexpr int64_t kAhead = 32768;  // at most this many bytes past the read position
  static constexpr int64_t kLead = 1024;    // where a cursor that fell behind restarts
  inline void step(const float* cur, int lines) {
    const char* c = reinterpret_cast<const char*>(cur);
    if (p < c + kLead) p = c + kLead;
    const char* lim = std::min(end, c + kAhead);
    for (int l = 0; l < lines && p < lim; ++l, p += 64) __builtin_prefetch(p, 0, 2);
  }
};

// The k best (score, index) of one row, best first; ties keep the lower index first.
struct Best {
  float* v;
  int32_t* i;
  int64_t k;
  int64_t c = 0;
  float thr = kNegInf;  // a score must beat this to enter: the k-th once full
  // x > thr is the caller's check.
  inline void push(float x, int32_t j) {
    int64_t p = c < k ? c : k - 1;
    while (p > 0 && v[p - 1] < x) {
      v[p] = v[p - 1];
      i[p] = i[p - 1];
      --p;
    }
    v[p] = x;
    i[p] = j;
    if (c < k) ++c;
    if (c == k) thr = v[k - 1];
  }
  inline void finish() {
    for (int64_t p = c; p < k; ++p) {
      v[p] = kNegInf;
      i[p] = -1;
    }
  }
};

// XLA:CPU's arithmetic for kernels._scores (u = p0 w0 + p1 w1 + ...), which LLVM contracts to
// fma(p0, w0, p1 w1), then fma(p_j, w_j, u): the same roundings here, so the native and XLA
// paths give the same scores bit for bit (tests/test_native.py).
inline float score_scalar(const float* p, const float* w, int64_t K) {
  if (K == 1) return p[0] * w[0];
  float acc = std::fma(p[0], w[0], p[1] * w[1]);
  for (int64_t j = 2; j < K; ++j) acc = std::fma(p[j], w[j], acc);
  return acc;
}

// Scalar row: any K, any CPU.
int32_t row_scalar(const float* pr, const float* w, const bool* mr, int64_t n, int64_t K,
                   Best& best) {
  int32_t bad = 0;
  for (int64_t t = 0; t < n; ++t) {
    if (!mr[t]) continue;
    const float u = score_scalar(pr + t * K, w, K) + 0.0f;
    if (!std::isfinite(u)) {
      ++bad;
      continue;
    }
    if (u > best.thr) best.push(u, (int32_t)t);
  }
  return bad;
}

#ifdef __AVX512F__
// Transpose tables for 16 candidates of K interleaved predictions (16 K floats in K registers):
// V_j[c] = flat[c K + j] is gathered from register pairs (2q, 2q + 1) with one two-source
// permute each, merged by lane masks.
template <int K>
struct Transpose {
  static constexpr int P = (K + 1) / 2;
  __m512i idx[K][P];
  __mmask16 take[K][P];
  Transpose() {
    for (int j = 0; j < K; ++j)
      for (int q = 0; q < P; ++q) {
        alignas(64) int32_t id[16];
        __mmask16 m = 0;
        for (int c = 0; c < 16; ++c) {
          const int f = c * K + j;
          id[c] = 0;
          if (f / 32 == q) {
            id[c] = f - 32 * q;
            m |= (__mmask16)(1u << c);
          }
        }
        idx[j][q] = _mm512_load_si512(id);
        take[j][q] = m;
      }
  }
};

// The k best of a row as int64 keys (ordered score bits << 32 | ~index: larger is better, equal
// scores rank the lower index first) sorted descending in R registers of 8 (8 R >= k slots;
// slots past k hold smaller candidates and are never read). Inserting x is branch-free:
// new[i] = min(old[i - 1], max(old[i], x)) with old[-1] = +inf.
template <int R>
struct Sorted {
  __m512i s[R];
  Sorted() {
    for (int r = 0; r < R; ++r) s[r] = _mm512_set1_epi64(INT64_MIN);
  }
  inline void insert(int64_t key) {
    const __m512i x = _mm512_set1_epi64(key);
    __m512i prev = _mm512_set1_epi64(INT64_MAX);
    for (int r = 0; r < R; ++r) {
      const __m512i shifted = _mm512_alignr_epi64(s[r], prev, 7);  // [prev[7], s[0..6]]
      prev = s[r];
      s[r] = _mm512_min_epi64(shifted, _mm512_max_epi64(s[r], x));
    }
  }
  inline int64_t at(int64_t p) const {  // no store and reload: a lane permute
    const __m512i v = _mm512_permutexvar_epi64(_mm512_set1_epi64(p % 8), s[p / 8]);
    return _mm_cvtsi128_si64(_mm512_castsi512_si128(v));
  }
};

inline int32_t ordered(float v) {
  int32_t b;
  std::memcpy(&b, &v, 4);
  return b < 0 ? (b ^ 0x7fffffff) : b;
}

inline float from_ordered(int32_t o) {
  const int32_t b = o < 0 ? (o ^ 0x7fffffff) : o;
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}

// Scores of 16 candidates starting at i0: -inf for padding and NaN/inf (those real ones counted
// in bad), -0.0 as +0.0.
template <int K>
inline __m512 block_scores(const Transpose<K>& tr, const __m512* w, const float* pr,
                           const bool* mr, int64_t n, int64_t i0, int32_t& bad) {
  const __m512 zero = _mm512_setzero_ps();
  const int64_t left = n - i0;
  const float* src = pr + i0 * K;
  alignas(64) float tail[16 * K];
  alignas(16) bool mtail[16];
  const bool* msrc = mr + i0;
  if (left < 16) {  // the last, short block: a zero-padded copy, lanes past n not real
    std::memset(tail, 0, sizeof(tail));
    std::memcpy(tail, src, left * K * sizeof(float));
    std::memset(mtail, 0, sizeof(mtail));
    std::memcpy(mtail, msrc, left);
    src = tail;
    msrc = mtail;
  }
  const __mmask16 real = _mm_cmpneq_epi8_mask(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(msrc)), _mm_setzero_si128());
  __m512 Rg[2 * Transpose<K>::P];
  for (int r = 0; r < K; ++r) Rg[r] = _mm512_loadu_ps(src + 16 * r);
  if constexpr (K % 2 == 1) Rg[K] = zero;
  __m512 u = zero;
  for (int j = 0; j < K; ++j) {
    __m512 v = _mm512_permutex2var_ps(Rg[0], tr.idx[j][0], Rg[1]);
    for (int q = 1; q < Transpose<K>::P; ++q)
      v = _mm512_mask_blend_ps(tr.take[j][q], v,
                               _mm512_permutex2var_ps(Rg[2 * q], tr.idx[j][q], Rg[2 * q + 1]));
    if (j == 0) {
      u = v;  // x0, fused below
    } else if (j == 1) {
      u = _mm512_fmadd_ps(u, w[0], _mm512_mul_ps(v, w[1]));
    } else {
      u = _mm512_fmadd_ps(v, w[j], u);
    }
  }
  if constexpr (K == 1) u = _mm512_mul_ps(u, w[0]);
  u = _mm512_add_ps(u, zero);  // -0.0 -> +0.0
  // NaN (quiet 0x01, signalling 0x80) or +-inf (0x08, 0x10)
  const __mmask16 nonfinite = _mm512_fpclass_ps_mask(u, 0x01 | 0x08 | 0x10 | 0x80);
  bad += __builtin_popcount((unsigned)(real & nonfinite));
  return _mm512_mask_blend_ps(real & (__mmask16)~nonfinite, _mm512_set1_ps(kNegInf), u);
}

inline float key_score(int64_t key) {
  return key == INT64_MIN ? kNegInf : from_ordered((int32_t)(key >> 32));
}

// One row, in chunks of up to 512 candidates: (1) score the chunk into an L1 buffer, keeping 32
// group maxima (lane l of the even / odd blocks); (2) the k-th largest group maximum t0 (k <=
// 32) is a lower bound of the chunk's k-th best, and every candidate of the row's top k is among
// its chunk's top k, so only scores >= max(t0, the row's k-th so far) can enter: their keys are
// compressed into a list (no branches per candidate) and (3) inserted. About 40 of 500 random
// candidates pass (1) and (2); streaming inserts without the bound took ~100.
template <int K, int R>
int32_t row_avx512(const float* pr, const float* wr, const bool* mr, int64_t n, int64_t k,
                   float* out_v, int32_t* out_i, Prefetcher& pf) {
  static const Transpose<K> tr;
  constexpr int64_t kChunk = 512;
  __m512 w[K];
  for (int j = 0; j < K; ++j) w[j] = _mm512_set1_ps(wr[j]);
  alignas(64) float ubuf[kChunk];
  alignas(64) float cv[kChunk + 16];
  alignas(64) int32_t ci[kChunk + 16];
  Sorted<R> best;
  int32_t bad = 0;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t cn = std::min(kChunk, n - c0);
    PHASE_MARK(t_score);
    __m512 g0 = _mm512_set1_ps(kNegInf), g1 = g0;
    int64_t i = 0;
    for (; i + 32 <= cn; i += 32) {
      // the hardware prefetcher alone left the pass ~1.5x slower than a plain read of preds;
      // K lines here and one per selection step keep the cursor ahead (see Prefetcher)
      pf.step(pr + (c0 + i) * K, (int)K);
      const __m512 u0 = block_scores<K>(tr, w, pr, mr, n, c0 + i, bad);
      const __m512 u1 = block_scores<K>(tr, w, pr, mr, n, c0 + i + 16, bad);
      _mm512_store_ps(ubuf + i, u0);
      _mm512_store_ps(ubuf + i + 16, u1);
      g0 = _mm512_max_ps(g0, u0);
      g1 = _mm512_max_ps(g1, u1);
    }
    for (; i < cn; i += 16) {
      const __m512 u0 = block_scores<K>(tr, w, pr, mr, n, c0 + i, bad);
      _mm512_store_ps(ubuf + i, u0);
      g0 = _mm512_max_ps(g0, u0);
    }
    // t0, the k-th largest of the 32 group maxima v: max{v_i : #{j : v_j >= v_i} >= k}, by
    // counting in registers (32 serial inserts into a sorted list cost ~12% more per row)
    PHASE_MARK(t_bound);
    PHASE_ADD(0, t_score, t_bound);
    const float* next = pr + (c0 + cn) * K;
    alignas(64) float gv[32];
    _mm512_store_ps(gv, g0);
    _mm512_store_ps(gv + 16, g1);
    __m512i n0 = _mm512_setzero_si512(), n1 = n0;
    const __m512i one = _mm512_set1_epi32(1);
    for (int g = 0; g < 32; ++g) {
      pf.step(next, 1);
      const __m512 vg = _mm512_set1_ps(gv[g]);
      n0 = _mm512_mask_add_epi32(n0, _mm512_cmp_ps_mask(vg, g0, _CMP_GE_OQ), n0, one);
      n1 = _mm512_mask_add_epi32(n1, _mm512_cmp_ps_mask(vg, g1, _CMP_GE_OQ), n1, one);
    }
    const __m512i kv = _mm512_set1_epi32((int)k);
    const __m512 ninf = _mm512_set1_ps(kNegInf);
    const float t0 = _mm512_reduce_max_ps(
        _mm512_max_ps(_mm512_mask_blend_ps(_mm512_cmpge_epi32_mask(n0, kv), ninf, g0),
                      _mm512_mask_blend_ps(_mm512_cmpge_epi32_mask(n1, kv), ninf, g1)));
    const float t = std::max(t0, key_score(best.at(k - 1)));
    PHASE_MARK(t_compress);
    PHASE_ADD(1, t_bound, t_compress);
    const __m512 tv = _mm512_set1_ps(t);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int64_t m = 0;
    for (int64_t b = 0; b < cn; b += 16) {
      pf.step(next, 1);
      const __m512 u = _mm512_load_ps(ubuf + b);
      __mmask16 pass = _mm512_cmp_ps_mask(u, tv, _CMP_GE_OQ) &
                       _mm512_cmp_ps_mask(u, _mm512_set1_ps(kNegInf), _CMP_GT_OQ);
      if (b + 16 > cn) pass &= (__mmask16)((1u << (cn - b)) - 1);
      // compress in registers and store whole vectors (a masked compress to memory is slow on
      // Intel cores); the lists have 16 slots of slack past the chunk
      _mm512_storeu_ps(cv + m, _mm512_maskz_compress_ps(pass, u));
      _mm512_storeu_si512(ci + m, _mm512_maskz_compress_epi32(
                                      pass, _mm512_add_epi32(lane, _mm512_set1_epi32((int)(c0 + b)))));
      m += __builtin_popcount((unsigned)pass);
    }
    PHASE_MARK(t_insert);
    PHASE_ADD(2, t_compress, t_insert);
    for (int64_t j = 0; j < m; ++j) {
      pf.step(next, 1);
      best.insert((int64_t)ordered(cv[j]) << 32 | (int64_t)(uint32_t)~ci[j]);
    }
    PHASE_MARK(t_done);
    PHASE_ADD(3, t_insert, t_done);
  }
  alignas(64) int64_t t[8 * R];
  for (int r = 0; r < R; ++r) _mm512_store_si512(t + 8 * r, best.s[r]);
  for (int64_t p = 0; p < k; ++p) {
    if (t[p] == INT64_MIN) {
      out_v[p] = kNegInf;
      out_i[p] = -1;
    } else {
      out_v[p] = from_ordered((int32_t)(t[p] >> 32));
      out_i[p] = ~(int32_t)(uint32_t)t[p];
    }
  }
  return bad;
}

template <int K>
int32_t row_k(const float* pr, const float* wr, const bool* mr, int64_t n, int64_t k,
              float* out_v, int32_t* out_i, Prefetcher& pf) {
  switch ((k + 7) / 8) {
    case 1: return row_avx512<K, 1>(pr, wr, mr, n, k, out_v, out_i, pf);
    case 2: return row_avx512<K, 2>(pr, wr, mr, n, k, out_v, out_i, pf);
    case 3: return row_avx512<K, 3>(pr, wr, mr, n, k, out_v, out_i, pf);
    default: return row_avx512<K, 4>(pr, wr, mr, n, k, out_v, out_i, pf);
  }
}
#endif

// One row: the vector path for K <= 8 and k <= 32, the scalar one otherwise.
int32_t row(const float* pr, const float* wr, const bool* mr, int64_t n, int64_t K, int64_t k,
            float* out_v, int32_t* out_i, Prefetcher& pf) {
#ifdef __AVX512F__
  if (k <= 32) {
    switch (K) {
      case 1: return row_k<1>(pr, wr, mr, n, k, out_v, out_i, pf);
      case 2: return row_k<2>(pr, wr, mr, n, k, out_v, out_i, pf);
      case 3: return row_k<3>(pr, wr, mr, n, k, out_v, out_i, pf);
      case 4: return row_k<4>(pr, wr, mr, n, k, out_v, out_i, pf);
      case 5: return row_k<5>(pr, wr, mr, n, k, out_v, out_i, pf);
      case 6: return row_k<6>(pr, wr, mr, n, k, out_v, out_i, pf);
      case 7: return row_k<7>(pr, wr, mr, n, k, out_v, out_i, pf);
      case 8: return row_k<8>(pr, wr, mr, n, k, out_v, out_i, pf);
      default: break;
    }
  }
#endif
  Best best{out_v, out_i, k};
  const int32_t bad = row_scalar(pr, wr, mr, n, K, best);
  best.finish();
  return bad;
}

#ifndef PUTS_JAX_NO_FFI
// preds f32[B, N, K], w f32[B, K], mask pred[B, N] -> val f32[B, k] best first (-inf past the
// real finite candidates), idx s32[B, k] (-1 there), bad s32[B] real candidates with a NaN/inf
// score.
// The shapes both handlers share: preds f32[B, N, K] and mask bool[B, N]; k >= 1, K >= 1.
// Returns an error naming ``who``, or nothing.
std::optional<ffi::Error> check_tail(const char* who, ffi::Buffer<ffi::F32>& preds,
                                     ffi::Buffer<ffi::PRED>& mask, int64_t k) {
  auto d = preds.dimensions();
  auto dm = mask.dimensions();
  const std::string w = who;
  if (d.size() != 3) return ffi::Error::InvalidArgument(w + ": preds must be f32[B, N, K]");
  if (dm.size() != 2 || dm[0] != d[0] || dm[1] != d[1])
    return ffi::Error::InvalidArgument(w + ": mask must be bool[B, N]");
  if (k < 1 || d[2] < 1) return ffi::Error::InvalidArgument(w + ": need k >= 1, K >= 1");
  return std::nullopt;
}

ffi::Error RerankImpl(ffi::Buffer<ffi::F32> preds, ffi::Buffer<ffi::F32> w,
                      ffi::Buffer<ffi::PRED> mask, ffi::ResultBuffer<ffi::F32> vals,
                      ffi::ResultBuffer<ffi::S32> idx, ffi::ResultBuffer<ffi::S32> bad,
                      int64_t k) {
  if (auto e = check_tail("puts_jax_rerank", preds, mask, k)) return *e;
  auto d = preds.dimensions();
  const int64_t B = d[0], n = d[1], K = d[2];
  auto dw = w.dimensions();
  if (dw.size() != 2 || dw[0] != B || dw[1] != K)
    return ffi::Error::InvalidArgument("puts_jax_rerank: w must be f32[B, K]");
  const float* P = preds.typed_data();
  const float* W = w.typed_data();
  const bool* M = mask.typed_data();
  float* ov = vals->typed_data();
  int32_t* oi = idx->typed_data();
  int32_t* ob = bad->typed_data();
  Prefetcher pf{reinterpret_cast<const char*>(P), reinterpret_cast<const char*>(P + B * n * K)};
  for (int64_t b = 0; b < B; ++b) {
    ob[b] = row(P + b * n * K, W + b * K, M + b * n, n, K, k, ov + b * k, oi + b * k, pf);
  }
  return ffi::Error::Success();
}

// First argmax of one row of scalarized Q-values s[A] (kernels.first_argmax_rows): the lowest
// index of the maximum, or fallback (and used = true) when any entry is NaN/inf.
inline int32_t select_row(const float* s, int64_t A, int32_t fallback, bool& used) {
#ifdef __AVX512F__
  // 16 lanes at a time: any NaN/inf -> fallback; else the lowest index equal (==, so -0.0 and
  // +0.0 tie as in the scalar loop) to the maximum. The scalar loop's data-dependent branch
  // mispredicted a few times a row on random Q (~0.5 ms at B = 8192, A = 64).
  __m512 mx = _mm512_set1_ps(kNegInf);
  __mmask16 nonfinite = 0;
  for (int64_t i = 0; i < A; i += 16) {
    const __mmask16 lm = A - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (A - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(lm, s + i);
    nonfinite |= _mm512_mask_fpclass_ps_mask(lm, v, 0x01 | 0x08 | 0x10 | 0x80);
    mx = _mm512_mask_max_ps(mx, lm, mx, v);
  }
  used = nonfinite != 0;
  if (used) return fallback;
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  for (int64_t i = 0; i < A; i += 16) {
    const __mmask16 lm = A - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (A - i)) - 1);
    const __mmask16 eq =
        _mm512_mask_cmp_ps_mask(lm, _mm512_maskz_loadu_ps(lm, s + i), m, _CMP_EQ_OQ);
    if (eq) return (int32_t)(i + __builtin_ctz((unsigned)eq));
  }
  return 0;  // not reached: the maximum of finite values is one of them
#else
  float m = s[0];
  int64_t a = 0;
  bool finite = std::isfinite(s[0]);
  for (int64_t i = 1; i < A; ++i) {
    finite &= std::isfinite(s[i]);
    if (s[i] > m) {
      m = s[i];
      a = i;
    }
  }
  used = !finite;
  return finite ? (int32_t)a : fallback;
#endif
}

// The whole serve tail from scalarized Q-values (kernels.serve_scores): select -> gather the
// action's utility weights -> re-weight + masked top-k, per request, in one call.
// s f32[B, A], W f32[A, K], preds f32[B, N, K], mask pred[B, N], fallback s32[] ->
// action s32[B], used_fallback pred[B], val f32[B, k], idx s32[B, k], bad s32[B].
ffi::Error ServeTailImpl(ffi::Buffer<ffi::F32> s, ffi::Buffer<ffi::F32> Wa,
                         ffi::Buffer<ffi::F32> preds, ffi::Buffer<ffi::PRED> mask,
                         ffi::Buffer<ffi::S32> fallback, ffi::ResultBuffer<ffi::S32> action,
                         ffi::ResultBuffer<ffi::PRED> used, ffi::ResultBuffer<ffi::F32> vals,
                         ffi::ResultBuffer<ffi::S32> idx, ffi::ResultBuffer<ffi::S32> bad,
                         int64_t k) {
  if (auto e = check_tail("puts_jax_serve_tail", preds, mask, k)) return *e;
  auto d = preds.dimensions();
  auto ds = s.dimensions();
  auto dw = Wa.dimensions();
  const int64_t B = d[0], n = d[1], K = d[2];
  if (ds.size() != 2 || ds[0] != B)
    return ffi::Error::InvalidArgument("puts_jax_serve_tail: s must be f32[B, A]");
  const int64_t A = ds[1];
  if (dw.size() != 2 || dw[0] != A || dw[1] != K)
    return ffi::Error::InvalidArgument("puts_jax_serve_tail: W must be f32[A, K]");
  const int32_t fb = fallback.typed_data()[0];
  if (A < 1 || fb < 0 || fb >= A)
    return ffi::Error::InvalidArgument("puts_jax_serve_tail: fallback outside [0, A)");
  const float* S = s.typed_data();
  const float* W = Wa.typed_data();
  const float* P = preds.typed_data();
  const bool* M = mask.typed_data();
  int32_t* oa = action->typed_data();
  bool* ou = used->typed_data();
  float* ov = vals->typed_data();
  int32_t* oi = idx->typed_data();
  int32_t* ob = bad->typed_data();
  Prefetcher pf{reinterpret_cast<const char*>(P), reinterpret_cast<const char*>(P + B * n * K)};
  for (int64_t b = 0; b < B; ++b) {
    bool u = false;
    const int32_t a = select_row(S + b * A, A, fb, u);
    oa[b] = a;
    ou[b] = u;
    ob[b] = row(P + b * n * K, W + a * K, M + b * n, n, K, k, ov + b * k, oi + b * k, pf);
  }
  return ffi::Error::Success();
}

#endif  // PUTS_JAX_NO_FFI
}  // namespace

#ifndef PUTS_JAX_NO_FFI

XLA_FFI_DEFINE_HANDLER_SYMBOL(PutsJaxRerank, RerankImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("k"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(PutsJaxServeTail, ServeTailImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("k"));
#endif  // PUTS_JAX_NO_FFI
