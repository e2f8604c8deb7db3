// Token reduction kernels: frame-difference keep mask, min-token rule + counts, compaction scan, row gather.
// Rule and arithmetic: runtime/hulurt/reduction.py (the numpy oracle), ported from ZJUI-AI4H/Hulu-Med
// src/hulumed/model/hulumed_arch.py `_get_compression_mask` (consecutive-frame mean |diff| > threshold).
// Versions and timings of the mask kernel: dev.cu. No TensorRT headers here (glue: token_reduce_plugin.cpp).
//
// Exactness (so masks equal the oracle, not just "close"):
//  - bf16 mode: pixels, the difference, the mean and the x255 / /255 steps are rounded to bfloat16 with
//    round-to-nearest-even (__float2bfloat16_rn), exactly the oracle's round_bf16. The |diff| terms are
//    bfloat16 values; for pixels derived from 8-bit images they are multiples of 2^-15 below 2, so an fp32 sum
//    of them is exact in any order while it stays below 2^9 (covers every sum near a 0.1 threshold).
//  - fp32 mode: |diff| in fp32 (one IEEE subtraction, as numpy), accumulated in fp64. For 8-bit-derived pixels
//    every |diff| is a multiple of 2^-32 below 2, so the fp64 sum of <= 2^20 of them is exact in any order and
//    its conversion to fp32 is the oracle's single rounding. fp32 accumulation would round after a few hundred
//    terms and flip tokens near the threshold, so fp64 it is: one F2F + DADD per pixel, hidden under the loads.
//  - mean = sum / D with an IEEE division (__fdiv_rn), compare with '>' (a mean equal to the threshold drops).
#include "token_reduce.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace hulu_tr {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kPairThreads = 256;       // 8 warps, one (frame, token) pair each
constexpr int kStreamThreads = 128;     // 4 warps per token row
constexpr int kStreamChunk = 32;        // frames per block in the streaming kernel (1/32 extra reads)
constexpr int kStreamMaxV = 8;          // float4 per thread: token_dim <= 4 * 128 * 8 = 4096
constexpr int kRowThreads = 256;        // per-frame kernels (rules, scan)

__device__ __forceinline__ float bf16_round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

template <bool BF16>
struct Acc;
template <>
struct Acc<true> {
  using T = float;
};
template <>
struct Acc<false> {
  using T = double;
};

// acc += |x_t - x_{t-1}| in the mode's arithmetic. ROUNDED: cur and prev are already bf16 values (bf16 mode).
template <bool BF16, bool ROUNDED = false>
__device__ __forceinline__ void accum(typename Acc<BF16>::T& acc, float cur, float prev) {
  if constexpr (BF16) {
    const float c = ROUNDED ? cur : bf16_round(cur), p = ROUNDED ? prev : bf16_round(prev);
    const float diff = bf16_round(__fsub_rn(c, p));
    acc = __fadd_rn(acc, fabsf(diff));
  } else {
    acc = __dadd_rn(acc, static_cast<double>(fabsf(__fsub_rn(cur, prev))));
  }
}

template <bool BF16, bool ROUNDED = false>
__device__ __forceinline__ void accum4(typename Acc<BF16>::T& acc, const float4& c, const float4& p) {
  accum<BF16, ROUNDED>(acc, c.x, p.x);
  accum<BF16, ROUNDED>(acc, c.y, p.y);
  accum<BF16, ROUNDED>(acc, c.z, p.z);
  accum<BF16, ROUNDED>(acc, c.w, p.w);
}

__device__ __forceinline__ float4 bf16_round4(float4 v) {
  return make_float4(bf16_round(v.x), bf16_round(v.y), bf16_round(v.z), bf16_round(v.w));
}

// The keep decision from the exact |diff| sum of one token.
template <bool BF16>
__device__ __forceinline__ uint8_t decide(typename Acc<BF16>::T sum, int64_t d, float threshold) {
  float mean = __fdiv_rn(static_cast<float>(sum), static_cast<float>(d));  // fp32(sum): the one rounding
  if constexpr (BF16) {
    mean = bf16_round(mean);
    mean = bf16_round(__fmul_rn(mean, 255.0f));  // upstream's x255 ... /255 round trip, in bf16
    mean = bf16_round(__fdiv_rn(mean, 255.0f));
    return mean > bf16_round(threshold) ? 1 : 0;
  } else {
    return mean > threshold ? 1 : 0;
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Sum over the block, returned to every thread. scratch: >= 32 entries of shared memory.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < n_warps; ++w) total += scratch[w];  // same order in every thread
  return total;
}

// ---- mask, version 2: one warp per (t >= 1, b); frames t and t-1 both read (t-major order: L2 serves t-1) ----
template <bool BF16, bool VEC>
__global__ void __launch_bounds__(kPairThreads)
    mask_pair_kernel(const float* __restrict__ x, int64_t n_frames, int64_t nb, int64_t d, float threshold,
                     uint8_t* __restrict__ keep) {
  using A = typename Acc<BF16>::T;
  const int64_t pair = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (pair >= (n_frames - 1) * nb) return;  // whole warps leave together
  const int64_t row = nb + pair;            // flat (t, b), t >= 1
  const float* cur = x + row * d;
  const float* prev = cur - nb * d;
  A acc = 0;
  if constexpr (VEC) {
    const float4* c4 = reinterpret_cast<const float4*>(cur);
    const float4* p4 = reinterpret_cast<const float4*>(prev);
    const int n4 = static_cast<int>(d >> 2);
#pragma unroll 4
    for (int i = lane; i < n4; i += 32) accum4<BF16>(acc, __ldg(c4 + i), __ldg(p4 + i));
  } else {
    for (int i = lane; i < d; i += 32) accum<BF16>(acc, __ldg(cur + i), __ldg(prev + i));
  }
  acc = warp_sum(acc);
  if (lane == 0) keep[row] = decide<BF16>(acc, d, threshold);
}

// ---- mask, version 3: block per (token b, chunk of frames); each frame row read once, t-1 kept in registers ----
template <int V>
__device__ __forceinline__ void load_row(float4 (&r)[V], const float4* __restrict__ src, int n4) {
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int i = threadIdx.x + k * kStreamThreads;
    r[k] = i < n4 ? __ldcs(src + i) : make_float4(0.f, 0.f, 0.f, 0.f);  // streamed: read once
  }
}

template <bool BF16, int V>
__global__ void __launch_bounds__(kStreamThreads)
    mask_stream_kernel(const float* __restrict__ x, int64_t n_frames, int64_t nb, int64_t d, float threshold,
                       uint8_t* __restrict__ keep) {
  using A = typename Acc<BF16>::T;
  constexpr int kWarps = kStreamThreads / 32;
  __shared__ A part[kStreamChunk][kWarps];
  const int64_t b = blockIdx.x;
  const int64_t t0 = 1 + static_cast<int64_t>(blockIdx.y) * kStreamChunk;
  const int64_t t1 = min(n_frames, t0 + kStreamChunk);
  const int n4 = static_cast<int>(d >> 2);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // x viewed as float4 [n_frames, nb, n4]; row (t, b) starts at (t * nb + b) * n4
  const float4* col = reinterpret_cast<const float4*>(x) + b * n4;
  const int64_t frame4 = nb * n4;
  float4 prev[V], cur[V], next[V];
  load_row<V>(prev, col + (t0 - 1) * frame4, n4);
  load_row<V>(cur, col + t0 * frame4, n4);
  if constexpr (BF16) {  // each pixel rounded to bf16 once; prev keeps the rounded values
#pragma unroll
    for (int k = 0; k < V; ++k) prev[k] = bf16_round4(prev[k]);
  }
  for (int64_t t = t0; t < t1; ++t) {
    if (t + 1 < t1) load_row<V>(next, col + (t + 1) * frame4, n4);  // in flight while t is summed
    A acc = 0;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if constexpr (BF16) cur[k] = bf16_round4(cur[k]);
      if (threadIdx.x + k * kStreamThreads < n4) accum4<BF16, true>(acc, cur[k], prev[k]);
    }
    acc = warp_sum(acc);
    if (lane == 0) part[t - t0][warp] = acc;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      prev[k] = cur[k];
      cur[k] = next[k];
    }
  }
  __syncthreads();
  const int64_t t = t0 + threadIdx.x;
  if (t < t1) {
    A sum = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += part[threadIdx.x][w];
    keep[t * nb + b] = decide<BF16>(sum, d, threshold);
  }
}

// ---- per frame: first-frame and min-token rules (RULES), kept counts ----
template <bool RULES>
__global__ void __launch_bounds__(kRowThreads)
    frame_rules_kernel(uint8_t* __restrict__ keep, int64_t nb, int64_t k, int64_t* __restrict__ counts) {
  __shared__ long long scratch[32];
  const int64_t t = blockIdx.x;
  uint8_t* row = keep + t * nb;
  if (RULES && t == 0) {  // frame 0 is kept whole
    for (int64_t b = threadIdx.x; b < nb; b += blockDim.x) row[b] = 1;
    if (threadIdx.x == 0 && counts) counts[0] = nb;
    return;
  }
  long long kept = 0, kept_first = 0;
  for (int64_t b = threadIdx.x; b < nb; b += blockDim.x) {
    const long long v = row[b] != 0;
    kept += v;
    kept_first += b < k ? v : 0;
  }
  long long total = block_sum(kept, scratch);
  if (RULES) {
    const long long first = block_sum(kept_first, scratch);
    if (total < k) {  // too few kept: its first k tokens are kept
      for (int64_t b = threadIdx.x; b < k; b += blockDim.x) row[b] = 1;
      total = total - first + k;
    }
  }
  if (threadIdx.x == 0 && counts) counts[t] = total;
}

// ---- per frame: offset = sum of earlier counts, then a block scan of keep writing the flat kept indices ----
__global__ void __launch_bounds__(kRowThreads)
    scatter_kernel(const uint8_t* __restrict__ keep, int64_t n_frames, int64_t nb,
                   const int64_t* __restrict__ counts, int64_t* __restrict__ indices, int64_t* __restrict__ n_kept) {
  __shared__ long long scratch[32];
  __shared__ int warp_total[kRowThreads / 32];
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  long long part = 0;
  for (int64_t i = threadIdx.x; i < t; i += blockDim.x) part += counts[i];
  const long long offset = block_sum(part, scratch);
  long long running = 0;
  for (int64_t base = 0; base < nb; base += blockDim.x) {  // block-uniform trip count
    const int64_t b = base + threadIdx.x;
    const bool flag = b < nb && keep[t * nb + b] != 0;
    const unsigned ballot = __ballot_sync(kFull, flag);
    const int before_in_warp = __popc(ballot & ((1u << lane) - 1u));
    if (lane == 0) warp_total[warp] = __popc(ballot);
    __syncthreads();
    int before_warp = 0, chunk = 0;
    for (int w = 0; w < kRowThreads / 32; ++w) {
      before_warp += w < warp ? warp_total[w] : 0;
      chunk += warp_total[w];
    }
    if (flag) indices[offset + running + before_warp + before_in_warp] = t * nb + b;
    running += chunk;
    __syncthreads();  // warp_total is rewritten next chunk
  }
  if (t == n_frames - 1 && threadIdx.x == 0) *n_kept = offset + running;
}

// ---- gather: dst[i] = src[indices[i]] for i < *n_kept, grid-stride over rows ----
template <typename W>
__global__ void gather_kernel(const W* __restrict__ src, int64_t n_src, int64_t row_words,
                              const int64_t* __restrict__ indices, const int64_t* __restrict__ n_kept,
                              int64_t max_rows, W* __restrict__ dst) {
  const int64_t n = min(*n_kept, max_rows);
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const int64_t s = indices[r];
    if (s < 0 || s >= n_src) continue;
    const W* a = src + s * row_words;
    W* o = dst + r * row_words;
    for (int64_t i = threadIdx.x; i < row_words; i += blockDim.x) o[i] = a[i];
  }
}

int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 1;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 1;
  return n > 0 ? n : 1;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <bool BF16>
void launch_stream(int v, dim3 grid, cudaStream_t s, const float* x, int64_t T, int64_t nb, int64_t d, float thr,
                   uint8_t* keep) {
  switch (v) {
#define HULU_TR_CASE(V) \
  case V: mask_stream_kernel<BF16, V><<<grid, kStreamThreads, 0, s>>>(x, T, nb, d, thr, keep); break;
    HULU_TR_CASE(1) HULU_TR_CASE(2) HULU_TR_CASE(3) HULU_TR_CASE(4)
    HULU_TR_CASE(5) HULU_TR_CASE(6) HULU_TR_CASE(7) HULU_TR_CASE(8)
#undef HULU_TR_CASE
    default: break;
  }
}

// Mask for frames t >= 1 only (frame 0 and the min-token rule: frame_rules_kernel).
int launch_diff_mask(const float* x, int64_t T, int64_t nb, int64_t d, float thr, int bf16, int algo, uint8_t* keep,
                     cudaStream_t s) {
  if (T < 2) return cudaSuccess;
  const bool vec = (d % 4 == 0) && aligned16(x);
  const int v = static_cast<int>((d / 4 + kStreamThreads - 1) / kStreamThreads);
  const int64_t chunks = (T - 1 + kStreamChunk - 1) / kStreamChunk;
  const bool stream_ok = vec && v <= kStreamMaxV && chunks <= 65535 && nb <= 0x7fffffff;
  if (algo == HULU_TR_ALGO_STREAM && !stream_ok) return HULU_TR_ERR_ARGUMENT;
  if (algo == HULU_TR_ALGO_AUTO) {
    // The streaming kernel needs enough (token, chunk) blocks to fill the chip; small inputs take the pair one.
    algo = (stream_ok && nb * chunks >= 4LL * sm_count()) ? HULU_TR_ALGO_STREAM : HULU_TR_ALGO_PAIR;
  }
  if (algo == HULU_TR_ALGO_STREAM) {
    const dim3 grid(static_cast<unsigned>(nb), static_cast<unsigned>(chunks));
    if (bf16) launch_stream<true>(v, grid, s, x, T, nb, d, thr, keep);
    else launch_stream<false>(v, grid, s, x, T, nb, d, thr, keep);
  } else if (algo == HULU_TR_ALGO_PAIR) {
    const int64_t warps = (T - 1) * nb;
    const int64_t blocks = (warps * 32 + kPairThreads - 1) / kPairThreads;
    if (blocks > 0x7fffffffLL) return HULU_TR_ERR_ARGUMENT;
    const unsigned g = static_cast<unsigned>(blocks);
    if (bf16 && vec) mask_pair_kernel<true, true><<<g, kPairThreads, 0, s>>>(x, T, nb, d, thr, keep);
    else if (bf16) mask_pair_kernel<true, false><<<g, kPairThreads, 0, s>>>(x, T, nb, d, thr, keep);
    else if (vec) mask_pair_kernel<false, true><<<g, kPairThreads, 0, s>>>(x, T, nb, d, thr, keep);
    else mask_pair_kernel<false, false><<<g, kPairThreads, 0, s>>>(x, T, nb, d, thr, keep);
  } else {
    return HULU_TR_ERR_ARGUMENT;
  }
  return cudaGetLastError();
}

bool mask_args_ok(const float* x, int64_t T, int64_t nb, int64_t d, int64_t min_tokens, const uint8_t* keep) {
  // d < 2^24: the float conversion of D in the mean is exact; T*nb indexes fit comfortably in int64.
  return x && keep && T >= 1 && nb >= 1 && d >= 1 && d < (1LL << 24) && min_tokens >= 0 && T <= 0x7fffffffLL &&
         nb <= (1LL << 40) / T;
}

}  // namespace hulu_tr

using namespace hulu_tr;

extern "C" int hulu_tr_abi_version(void) { return HULU_TR_ABI_VERSION; }

extern "C" const char* hulu_tr_error_string(int code) {
  if (code == HULU_TR_ERR_ARGUMENT) return "hulu_tr: argument out of range (null pointer, size, mode or algo)";
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

extern "C" int hulu_tr_keep_mask(const float* pixels, int64_t n_frames, int64_t n_tokens, int64_t token_dim,
                                 float threshold, int64_t min_tokens, int bf16, int algo, uint8_t* keep,
                                 int64_t* counts, cudaStream_t stream) {
  if (!mask_args_ok(pixels, n_frames, n_tokens, token_dim, min_tokens, keep)) return HULU_TR_ERR_ARGUMENT;
  int rc = launch_diff_mask(pixels, n_frames, n_tokens, token_dim, threshold, bf16, algo, keep, stream);
  if (rc != cudaSuccess) return rc;
  const int64_t k = min_tokens < n_tokens ? min_tokens : n_tokens;
  frame_rules_kernel<true><<<static_cast<unsigned>(n_frames), kRowThreads, 0, stream>>>(keep, n_tokens, k, counts);
  return cudaGetLastError();
}

extern "C" int hulu_tr_compact(const uint8_t* keep, int64_t n_frames, int64_t n_tokens, int64_t* indices,
                               int64_t* counts, int64_t* n_kept, cudaStream_t stream) {
  if (!keep || !indices || !counts || !n_kept || n_frames < 1 || n_tokens < 1 || n_frames > 0x7fffffffLL)
    return HULU_TR_ERR_ARGUMENT;
  const unsigned g = static_cast<unsigned>(n_frames);
  // the counting pass does not write keep; the cast is for the shared kernel's signature only
  frame_rules_kernel<false><<<g, kRowThreads, 0, stream>>>(const_cast<uint8_t*>(keep), n_tokens, 0, counts);
  scatter_kernel<<<g, kRowThreads, 0, stream>>>(keep, n_frames, n_tokens, counts, indices, n_kept);
  return cudaGetLastError();
}

extern "C" int hulu_tr_reduce(const float* pixels, int64_t n_frames, int64_t n_tokens, int64_t token_dim,
                              float threshold, int64_t min_tokens, int bf16, int algo, uint8_t* keep,
                              int64_t* indices, int64_t* counts, int64_t* n_kept, cudaStream_t stream) {
  if (!indices || !counts || !n_kept) return HULU_TR_ERR_ARGUMENT;
  int rc = hulu_tr_keep_mask(pixels, n_frames, n_tokens, token_dim, threshold, min_tokens, bf16, algo, keep,
                             counts, stream);
  if (rc != cudaSuccess) return rc;
  scatter_kernel<<<static_cast<unsigned>(n_frames), kRowThreads, 0, stream>>>(keep, n_frames, n_tokens, counts,
                                                                              indices, n_kept);
  return cudaGetLastError();
}

extern "C" int hulu_tr_gather_rows(const void* src, int64_t n_src_rows, int64_t row_bytes, const int64_t* indices,
                                   const int64_t* n_kept, int64_t max_rows, void* dst, cudaStream_t stream) {
  if (!src || !dst || !indices || !n_kept || n_src_rows < 0 || row_bytes < 2 || row_bytes % 2 != 0 || max_rows < 0)
    return HULU_TR_ERR_ARGUMENT;
  if (max_rows == 0) return cudaSuccess;
  const unsigned g = static_cast<unsigned>(max_rows < 32LL * sm_count() ? max_rows : 32LL * sm_count());
  constexpr int kThreads = 128;
  if (row_bytes % 16 == 0 && aligned16(src) && aligned16(dst)) {
    gather_kernel<uint4><<<g, kThreads, 0, stream>>>(static_cast<const uint4*>(src), n_src_rows, row_bytes / 16,
                                                     indices, n_kept, max_rows, static_cast<uint4*>(dst));
  } else if (row_bytes % 4 == 0 && (reinterpret_cast<uintptr_t>(src) & 3u) == 0 &&
             (reinterpret_cast<uintptr_t>(dst) & 3u) == 0) {
    gather_kernel<uint32_t><<<g, kThreads, 0, stream>>>(static_cast<const uint32_t*>(src), n_src_rows,
                                                        row_bytes / 4, indices, n_kept, max_rows,
                                                        static_cast<uint32_t*>(dst));
  } else {
    gather_kernel<uint16_t><<<g, kThreads, 0, stream>>>(static_cast<const uint16_t*>(src), n_src_rows,
                                                        row_bytes / 2, indices, n_kept, max_rows,
                                                        static_cast<uint16_t*>(dst));
  }
  return cudaGetLastError();
}
