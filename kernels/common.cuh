// Shared helpers of relay's CUDA kernels (issue 17): float <-> storage-type conversions and
// deterministic block reductions. Every kernel computes in float32 whatever it reads or
// writes (float32 or bfloat16), and every sum is reduced in a fixed order (warp shuffles,
// then one warp over the per-warp partials) so that a result does not change from run to
// run.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
// Round to nearest even, as candle's float32 -> bfloat16 cast.
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

struct Sum {
  __device__ static float warp(float v) { return warp_sum(v); }
  static constexpr float identity = 0.f;
};
struct Max {
  __device__ static float warp(float v) { return warp_max(v); }
  static constexpr float identity = -INFINITY;
};

// The reduction `Op` of `v` over the block, returned to every thread. blockDim.x must be a
// multiple of 32 (at most 1024); `scratch` holds 32 floats. Safe to call repeatedly: the
// first barrier keeps a call from overwriting partials that the previous one still reads.
template <typename Op>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
  v = Op::warp(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : Op::identity;
  return Op::warp(v);
}

__device__ __forceinline__ float block_sum(float v, float* scratch) {
  return block_reduce<Sum>(v, scratch);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  return block_reduce<Max>(v, scratch);
}

// Two sums at once (one pair of barriers); `scratch` holds 64 floats.
__device__ __forceinline__ float2 block_sum2(float a, float b, float* scratch) {
  a = warp_sum(a);
  b = warp_sum(b);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = a;
    scratch[32 + warp] = b;
  }
  __syncthreads();
  const bool live = lane < (int)(blockDim.x >> 5);
  a = live ? scratch[lane] : 0.f;
  b = live ? scratch[32 + lane] : 0.f;
  return make_float2(warp_sum(a), warp_sum(b));
}
