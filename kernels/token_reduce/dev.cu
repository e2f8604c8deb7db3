/*
Workbench for the token-reduction mask kernel (llm.c dev/cuda style): a CPU reference, numbered kernel versions,
validation of each against the reference, and timing.

Compile and run (from kernels/):
  make dev && ./build/dev            # all versions, both modes, 160 frames x 1024 tokens x 2352 values
  ./build/dev 3 40 256 588           # version 3 only, T=40, nb=256, D=588
  compute-sanitizer --tool racecheck ./build/dev 0 8 64 2352   # small sizes under the sanitizers

version 1: one thread per (frame, token), scalar loads: the obvious port, uncoalesced.
version 2: one warp per (frame, token), float4 loads of frames t and t-1 (t-major, so L2 serves the re-read
           of t-1 at the next frame). In the library as HULU_TR_ALGO_PAIR.
version 3: one block per (token, 32 frames), frame t-1 kept in registers, next frame prefetched: every pixel
           read once (+1/32 for the chunk's first previous frame). In the library as HULU_TR_ALGO_STREAM.
Versions 2 and 3 are the library's kernels (this file includes token_reduce.cu), so what is timed here ships.
Pixels are 8-bit-derived (u8 / 127.5 - 1) as the preprocessing makes them; a third of the tokens sit near the
threshold (steps of +-24..27 grey levels) so that rounding errors would show as mismatches.
*/
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <vector>
#include <algorithm>

#include "token_reduce.cu"

#define CHECK(call)                                                                         \
  do {                                                                                      \
    cudaError_t e_ = (call);                                                                \
    if (e_ != cudaSuccess) {                                                                \
      fprintf(stderr, "CUDA error %s at %s:%d: %s\n", #call, __FILE__, __LINE__,            \
              cudaGetErrorString(e_));                                                      \
      exit(1);                                                                              \
    }                                                                                       \
  } while (0)

// ---------------- CPU reference (the oracle's arithmetic; runtime/hulurt/reduction.py) ----------------
static float bf16r_host(float x) {
  if (std::isnan(x)) return x;
  uint32_t u;
  memcpy(&u, &x, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  float y;
  memcpy(&y, &u, 4);
  return y;
}

static void mask_cpu(const float* x, int64_t T, int64_t nb, int64_t d, float thr, int bf16, uint8_t* keep) {
  for (int64_t b = 0; b < nb; ++b) keep[b] = 1;
  for (int64_t t = 1; t < T; ++t) {
    for (int64_t b = 0; b < nb; ++b) {
      const float* c = x + (t * nb + b) * d;
      const float* p = c - nb * d;
      double s = 0.0;
      for (int64_t i = 0; i < d; ++i) {
        float diff = bf16 ? bf16r_host(bf16r_host(c[i]) - bf16r_host(p[i])) : c[i] - p[i];
        s += std::fabs(diff);
      }
      float mean = static_cast<float>(s) / static_cast<float>(d);
      bool k;
      if (bf16) {
        mean = bf16r_host(bf16r_host(bf16r_host(mean) * 255.0f) / 255.0f);
        k = mean > bf16r_host(thr);
      } else {
        k = mean > thr;
      }
      keep[t * nb + b] = k;
    }
  }
}

// ---------------- version 1: one thread per (t, b), scalar ----------------
template <bool BF16>
__global__ void mask_naive_kernel(const float* x, int64_t T, int64_t nb, int64_t d, float thr, uint8_t* keep) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= (T - 1) * nb) return;
  const int64_t row = nb + i;
  const float* c = x + row * d;
  const float* p = c - nb * d;
  typename hulu_tr::Acc<BF16>::T acc = 0;
  for (int64_t k = 0; k < d; ++k) hulu_tr::accum<BF16>(acc, c[k], p[k]);
  keep[row] = hulu_tr::decide<BF16>(acc, d, thr);
}

static void run_version(int v, const float* x, int64_t T, int64_t nb, int64_t d, float thr, int bf16,
                        uint8_t* keep) {
  if (v == 1) {
    const int64_t n = (T - 1) * nb;
    const unsigned g = static_cast<unsigned>((n + 255) / 256);
    if (bf16) mask_naive_kernel<true><<<g, 256>>>(x, T, nb, d, thr, keep);
    else mask_naive_kernel<false><<<g, 256>>>(x, T, nb, d, thr, keep);
    CHECK(cudaGetLastError());
  } else {
    int rc = hulu_tr::launch_diff_mask(x, T, nb, d, thr, bf16, v, keep, 0);
    if (rc != 0) {
      fprintf(stderr, "version %d launch failed: %s\n", v, hulu_tr_error_string(rc));
      exit(1);
    }
  }
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline uint32_t rng() {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return static_cast<uint32_t>(rng_state >> 32);
}

int main(int argc, char** argv) {
  int only = argc > 1 ? atoi(argv[1]) : 0;  // 0: all versions
  int64_t T = argc > 2 ? atoll(argv[2]) : 160, nb = argc > 3 ? atoll(argv[3]) : 1024, d = argc > 4 ? atoll(argv[4]) : 2352;
  const float thr = 0.1f;
  const int64_t n = T * nb * d;
  printf("token reduce workbench: T=%lld nb=%lld D=%lld (%.1f MB of fp32 pixels)\n", (long long)T, (long long)nb,
         (long long)d, n * 4.0 / 1e6);
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

  // 8-bit-derived pixels; token classes: static (+-2 levels), near threshold (+-25 levels), fresh
  std::vector<uint8_t> u8(n);
  for (int64_t i = 0; i < nb * d; ++i) u8[i] = rng() & 0xff;
  for (int64_t t = 1; t < T; ++t) {
    for (int64_t b = 0; b < nb; ++b) {
      const int cls = rng() % 3;
      const int amp = cls == 0 ? 2 : 24 + static_cast<int>(rng() % 4);  // +-24..27 levels: mean |diff| 0.096..0.108
      uint8_t* c = &u8[(t * nb + b) * d];
      const uint8_t* p = c - nb * d;
      for (int64_t k = 0; k < d; ++k) {
        int v = cls == 2 ? static_cast<int>(rng() & 0xff) : p[k] + static_cast<int>(rng() % (2 * amp + 1)) - amp;
        c[k] = static_cast<uint8_t>(std::min(255, std::max(0, v)));
      }
    }
  }
  std::vector<float> h(n);
  for (int64_t i = 0; i < n; ++i) h[i] = static_cast<float>(u8[i]) / 127.5f - 1.0f;
  std::vector<uint8_t>().swap(u8);

  float* dx;
  uint8_t* dkeep;
  CHECK(cudaMalloc(&dx, n * sizeof(float)));
  CHECK(cudaMalloc(&dkeep, T * nb));
  CHECK(cudaMemcpy(dx, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));

  // device-to-device copy bandwidth (bytes read + written), the ceiling the mask is measured against
  float* dy;
  CHECK(cudaMalloc(&dy, n * sizeof(float)));
  CHECK(cudaMemcpy(dy, dx, n * sizeof(float), cudaMemcpyDeviceToDevice));
  std::vector<float> ms_copy;
  for (int r = 0; r < 20; ++r) {
    CHECK(cudaEventRecord(e0));
    CHECK(cudaMemcpyAsync(dy, dx, n * sizeof(float), cudaMemcpyDeviceToDevice));
    CHECK(cudaEventRecord(e1));
    CHECK(cudaEventSynchronize(e1));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    ms_copy.push_back(ms);
  }
  CHECK(cudaFree(dy));
  std::sort(ms_copy.begin(), ms_copy.end());
  const double copy_gbs = 2.0 * n * 4 / (ms_copy[ms_copy.size() / 2] * 1e-3) / 1e9;
  printf("device-to-device copy: %.1f GB/s (read + write, median of 20)\n", copy_gbs);

  std::vector<uint8_t> ref(T * nb), got(T * nb);
  int failures = 0;
  printf("%-8s %-5s %10s %12s %10s %8s %8s\n", "version", "mode", "mismatch", "median us", "GB/s", "% copy", "kept %");
  for (int bf16 = 1; bf16 >= 0; --bf16) {
    mask_cpu(h.data(), T, nb, d, thr, bf16, ref.data());
    for (int v = 1; v <= 3; ++v) {
      if (only && v != only) continue;
      CHECK(cudaMemset(dkeep, 0xAB, T * nb));  // poison: every entry must be written
      CHECK(cudaMemset(dkeep, 1, nb));         // frame 0 is the rules kernel's job; the versions skip it
      run_version(v, dx, T, nb, d, thr, bf16, dkeep);
      CHECK(cudaDeviceSynchronize());
      CHECK(cudaMemcpy(got.data(), dkeep, T * nb, cudaMemcpyDeviceToHost));
      int64_t bad = 0, kept = 0;
      for (int64_t i = 0; i < T * nb; ++i) {
        bad += got[i] != ref[i];
        kept += ref[i];
      }
      failures += bad != 0;
      const int reps = v == 1 ? 3 : 20;
      std::vector<float> ms_all;
      for (int r = 0; r < reps + 2; ++r) {
        CHECK(cudaEventRecord(e0));
        run_version(v, dx, T, nb, d, thr, bf16, dkeep);
        CHECK(cudaEventRecord(e1));
        CHECK(cudaEventSynchronize(e1));
        float ms;
        CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (r >= 2) ms_all.push_back(ms);
      }
      std::sort(ms_all.begin(), ms_all.end());
      const double ms = ms_all[ms_all.size() / 2];
      const double gbs = n * 4.0 / (ms * 1e-3) / 1e9;  // each pixel read once is the floor
      printf("%-8d %-5s %10lld %12.1f %10.1f %7.1f%% %7.1f%%\n", v, bf16 ? "bf16" : "fp32", (long long)bad, ms * 1e3,
             gbs, 100.0 * gbs / copy_gbs, 100.0 * kept / (T * nb));
    }
  }
  // The whole op (hulu_tr_reduce: mask + rules + scan) and the gather, against the CPU reference (bf16 mode).
  {
    mask_cpu(h.data(), T, nb, d, thr, 1, ref.data());
    std::vector<int64_t> ref_idx, ref_counts(T);
    for (int64_t t = 0; t < T; ++t) {
      int64_t c = 0;
      for (int64_t b = 0; b < nb; ++b) c += ref[t * nb + b];
      if (c < 1) ref[t * nb] = 1, c = 1;  // min_tokens = 1
      ref_counts[t] = c;
      for (int64_t b = 0; b < nb; ++b)
        if (ref[t * nb + b]) ref_idx.push_back(t * nb + b);
    }
    int64_t *didx, *dcounts, *dn;
    const int64_t hidden = 64;
    float *dfeat, *dout;
    CHECK(cudaMalloc(&didx, T * nb * 8));
    CHECK(cudaMalloc(&dcounts, T * 8));
    CHECK(cudaMalloc(&dn, 8));
    CHECK(cudaMalloc(&dfeat, T * nb * hidden * 4));
    CHECK(cudaMalloc(&dout, T * nb * hidden * 4));
    std::vector<float> feat(T * nb * hidden);
    for (auto& f : feat) f = static_cast<float>(rng()) / 4294967296.0f - 0.5f;
    CHECK(cudaMemcpy(dfeat, feat.data(), feat.size() * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemset(dkeep, 0xAB, T * nb));
    int rc = hulu_tr_reduce(dx, T, nb, d, thr, 1, 1, HULU_TR_ALGO_AUTO, dkeep, didx, dcounts, dn, 0);
    if (rc == 0) rc = hulu_tr_gather_rows(dfeat, T * nb, hidden * 4, didx, dn, T * nb, dout, 0);
    if (rc != 0) {
      fprintf(stderr, "hulu_tr_reduce/gather failed: %s\n", hulu_tr_error_string(rc));
      return 1;
    }
    CHECK(cudaDeviceSynchronize());
    int64_t n = 0;
    std::vector<int64_t> idx(T * nb), counts(T);
    std::vector<float> out(T * nb * hidden);
    CHECK(cudaMemcpy(&n, dn, 8, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(idx.data(), didx, T * nb * 8, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(counts.data(), dcounts, T * 8, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(got.data(), dkeep, T * nb, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(out.data(), dout, out.size() * 4, cudaMemcpyDeviceToHost));
    bool ok = n == static_cast<int64_t>(ref_idx.size()) && got == ref && counts == ref_counts &&
              std::equal(ref_idx.begin(), ref_idx.end(), idx.begin());
    for (int64_t i = 0; ok && i < n; ++i)
      ok = memcmp(&out[i * hidden], &feat[idx[i] * hidden], hidden * 4) == 0;
    printf("hulu_tr_reduce + gather (bf16, auto): n_kept=%lld of %lld: %s\n", (long long)n, (long long)(T * nb),
           ok ? "equal to the CPU reference" : "MISMATCH");
    failures += !ok;
    CHECK(cudaFree(didx));
    CHECK(cudaFree(dcounts));
    CHECK(cudaFree(dn));
    CHECK(cudaFree(dfeat));
    CHECK(cudaFree(dout));
  }
  CHECK(cudaFree(dx));
  CHECK(cudaFree(dkeep));
  printf(failures ? "FAIL: %d version(s) differ from the CPU reference\n" : "OK: all versions equal the CPU reference\n",
         failures);
  return failures ? 1 : 0;
}
