// The bench's native XLA FFI kernels (bench/native.py builds and registers them): the sweep's
// all-lambda greedy select (an experiment measured next to the library's sweep) and the latency
// suite's in-program wait for the agent's weights. The native top-k and re-weight experiments
// that were here became the library's serve tail (puts_jax/csrc/rerank.cc).
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

// The latency suite's in-program request to the agent process, at the start of the server's
// program: copy the request contexts f32[B, D] into the channel at ctx_addr, set SIZE = B, then
// REQ += 1 (release: the agent sees the contexts once it sees the new REQ). Returns a 0.0 token
// that the program adds to the ranker's biases, so the post is ordered before the ranker runs
// (a data dependency; no side-effect flag, see bench/native.py: await_weights).
ffi::Error PostRequestImpl(ffi::Buffer<ffi::F32> context, ffi::ResultBuffer<ffi::F32> token,
                           int64_t hdr_addr, int64_t ctx_addr) {
  auto d = context.dimensions();
  if (d.size() != 2) return ffi::Error::InvalidArgument("bench_post_request: context f32[B, D]");
  int64_t* hdr = reinterpret_cast<int64_t*>(hdr_addr);
  std::memcpy(reinterpret_cast<float*>(ctx_addr), context.typed_data(),
              d[0] * d[1] * sizeof(float));
  __atomic_store_n(hdr + 2, d[0], __ATOMIC_RELEASE);
  __atomic_store_n(hdr + 0, __atomic_load_n(hdr + 0, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE);
  token->typed_data()[0] = 0.0f;
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchAwaitWeights, AwaitWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("hdr_addr")
                                  .Attr<int64_t>("weights_addr")
                                  .Attr<int64_t>("timeout_ms"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchPostRequest, PostRequestImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("hdr_addr")
                                  .Attr<int64_t>("ctx_addr"));
