// Softmax over the last dimension and its backward (issue 17), the CUDA twin of
// src/model/ops/softmax.rs, for the attention weights:
//
//   y = exp(x - max x) / sum exp(x - max x)        dx = y * (dy - sum dy * y)
//
// One block per row; a row of L <= 8 * blockDim.x values is held in registers, so each
// direction reads its inputs once. The forward may write a narrower type than it reads
// (float32 logits -> bfloat16 weights), which is all the backward keeps: y in the
// network's type, never the float32 logits' exponentials.
#include "common.cuh"

#define PER 8

template <typename TI, typename TO>
__device__ void softmax_fwd(const TI* __restrict__ x, TO* __restrict__ y, int len) {
  __shared__ float scratch[32];
  const size_t row = (size_t)blockIdx.x * len;
  float v[PER];
  float m = -INFINITY;
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    v[k] = i < len ? to_f(x[row + i]) : -INFINITY;
    m = fmaxf(m, v[k]);
  }
  m = block_max(m, scratch);
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    v[k] = i < len ? expf(v[k] - m) : 0.f;
    s += v[k];
  }
  const float inv = 1.f / block_sum(s, scratch);
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < len) y[row + i] = from_f<TO>(v[k] * inv);
  }
}

template <typename TO, typename TI>
__device__ void softmax_bwd(const TO* __restrict__ g, const TO* __restrict__ y,
                            TI* __restrict__ dx, int len) {
  __shared__ float scratch[32];
  const size_t row = (size_t)blockIdx.x * len;
  float gv[PER], yv[PER];
  float dot = 0.f;
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    gv[k] = i < len ? to_f(g[row + i]) : 0.f;
    yv[k] = i < len ? to_f(y[row + i]) : 0.f;
    dot += gv[k] * yv[k];
  }
  dot = block_sum(dot, scratch);
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < len) dx[row + i] = from_f<TI>(yv[k] * (gv[k] - dot));
  }
}

// Names: softmax_fwd_<in>_<out>, softmax_bwd_<out>_<in> (the types of y/dy, then of dx).
#define SOFTMAX_KERNELS(TI, TO, SI, SO)                                                    \
  extern "C" __global__ void softmax_fwd_##SI##_##SO(const TI* x, TO* y, int len) {        \
    softmax_fwd<TI, TO>(x, y, len);                                                        \
  }                                                                                        \
  extern "C" __global__ void softmax_bwd_##SO##_##SI(const TO* g, const TO* y, TI* dx,     \
                                                     int len) {                            \
    softmax_bwd<TO, TI>(g, y, dx, len);                                                    \
  }

SOFTMAX_KERNELS(float, float, f32, f32)
SOFTMAX_KERNELS(float, __nv_bfloat16, f32, bf16)
SOFTMAX_KERNELS(__nv_bfloat16, __nv_bfloat16, bf16, bf16)
