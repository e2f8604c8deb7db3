// Token reduction (Hulu-Med inter-frame pixel-difference pruning) on the GPU: the C ABI of the kernels.
// Pure CUDA, no TensorRT headers: the plugin glue (token_reduce_plugin.cpp) and the ctypes binding
// (runtime/hulurt/cuda_reduce.py) both call these functions. Semantics: runtime/hulurt/reduction.py.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a signature below changes; the ctypes binding checks it.
#define HULU_TR_ABI_VERSION 1

// Errors that are not CUDA runtime errors (those are returned as their cudaError_t value, all < 1000).
#define HULU_TR_ERR_ARGUMENT 1001  // a size, pointer or mode out of range

// Mask algorithms (the numbered versions of dev.cu that made it into the library).
#define HULU_TR_ALGO_AUTO 0
#define HULU_TR_ALGO_PAIR 2    // one warp per (frame, token), reads frames t and t-1 (L2 serves the re-read)
#define HULU_TR_ALGO_STREAM 3  // one block per (token, chunk of frames), the previous frame kept in registers

int hulu_tr_abi_version(void);
const char* hulu_tr_error_string(int code);

// keep[t, b] (uint8 0/1, [n_frames, n_tokens]) for pixels [n_frames, n_tokens, token_dim] float32 (contiguous):
// frame 0 kept; t >= 1 kept iff mean_D |x[t,b,:] - x[t-1,b,:]| > threshold; then every frame with fewer than
// min(min_tokens, n_tokens) kept tokens gets its first ones kept. bf16 != 0: upstream's bfloat16 rounding.
// counts (optional, int64 [n_frames]) receives the kept count of each frame.
int hulu_tr_keep_mask(const float* pixels, int64_t n_frames, int64_t n_tokens, int64_t token_dim,
                      float threshold, int64_t min_tokens, int bf16, int algo, uint8_t* keep,
                      int64_t* counts, cudaStream_t stream);

// From keep [n_frames, n_tokens]: indices (int64, capacity n_frames*n_tokens) of the kept rows in token order,
// counts (int64 [n_frames]) and n_kept (int64 [1]), all on the device. Entries of indices past n_kept are untouched.
int hulu_tr_compact(const uint8_t* keep, int64_t n_frames, int64_t n_tokens, int64_t* indices,
                    int64_t* counts, int64_t* n_kept, cudaStream_t stream);

// keep_mask followed by compact, without recounting: the whole op in three launches.
int hulu_tr_reduce(const float* pixels, int64_t n_frames, int64_t n_tokens, int64_t token_dim, float threshold,
                   int64_t min_tokens, int bf16, int algo, uint8_t* keep, int64_t* indices, int64_t* counts,
                   int64_t* n_kept, cudaStream_t stream);

// dst[i, :] = src[indices[i], :] for i < *n_kept (a device scalar), rows of row_bytes bytes (any 2- or 4-byte
// element type: fp32, fp16, bf16 are copied bit for bit). max_rows bounds the launch (dst capacity);
// an index outside [0, n_src_rows) leaves its row untouched.
int hulu_tr_gather_rows(const void* src, int64_t n_src_rows, int64_t row_bytes, const int64_t* indices,
                        const int64_t* n_kept, int64_t max_rows, void* dst, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
