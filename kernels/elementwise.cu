// Small element-wise kernels around cuDNN and the optimiser (issue 17):
//
// * bias_add / bias_grad: a convolution's per-channel bias on [B, C, HW] (when cuDNN's
//   fused conv + bias is not available for a shape or type) and its gradient, the sum of
//   dy over (B, HW) in float32, in a fixed order.
// * adam_moment / adam_param / ema_lerp: the in-place Adam and EMA updates of
//   src/train/fused_adam.rs, the same float32 arithmetic in the same order. `__fmul_rn`
//   and `__fadd_rn` keep nvcc from contracting a * b + c into one fused multiply-add, so
//   that the GPU rounds exactly as the CPU twin does.
#include "common.cuh"

// y[b, c, i] += bias[c]. Grid: x over the B*C planes, y (stride loop) over a plane.
template <typename T>
__device__ void bias_add(T* __restrict__ y, const T* __restrict__ bias, int c, int hw) {
  const int p = blockIdx.x;
  const float b = to_f(bias[p % c]);
  T* yp = y + (size_t)p * hw;
  for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < hw; i += gridDim.y * blockDim.x)
    yp[i] = from_f<T>(to_f(yp[i]) + b);
}

// db[c] = sum over b, i of dy[b, c, i]. One block per channel.
template <typename T>
__device__ void bias_grad(const T* __restrict__ dy, T* __restrict__ db, int b, int c, int hw) {
  __shared__ float scratch[32];
  const int ch = blockIdx.x;
  float s = 0.f;
  for (int bi = 0; bi < b; ++bi) {
    const T* p = dy + ((size_t)bi * c + ch) * hw;
    for (int i = threadIdx.x; i < hw; i += blockDim.x) s += to_f(p[i]);
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) db[ch] = from_f<T>(s);
}

#define BIAS_KERNELS(T, S)                                                                  \
  extern "C" __global__ void bias_add_##S(T* y, const T* bias, int c, int hw) {             \
    bias_add<T>(y, bias, c, hw);                                                            \
  }                                                                                         \
  extern "C" __global__ void bias_grad_##S(const T* dy, T* db, int b, int c, int hw) {      \
    bias_grad<T>(dy, db, b, c, hw);                                                         \
  }

BIAS_KERNELS(float, f32)
BIAS_KERNELS(__nv_bfloat16, bf16)

// m <- beta * m + (1 - beta) * g   (g * g with `square`)
extern "C" __global__ void adam_moment(float* __restrict__ m, const float* __restrict__ g,
                                       float beta, float one_minus_beta, int square, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const float gi = square ? __fmul_rn(g[i], g[i]) : g[i];
    m[i] = __fadd_rn(__fmul_rn(m[i], beta), __fmul_rn(gi, one_minus_beta));
  }
}

// p <- p - m / (sqrt(v) * inv_sqrt_bc2 + eps) * step
extern "C" __global__ void adam_param(float* __restrict__ p, const float* __restrict__ m,
                                      const float* __restrict__ v, float step,
                                      float inv_sqrt_bc2, float eps, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const float denom = __fadd_rn(__fmul_rn(sqrtf(v[i]), inv_sqrt_bc2), eps);
    p[i] = __fsub_rn(p[i], __fmul_rn(__fdiv_rn(m[i], denom), step));
  }
}

// ema <- net + beta * (ema - net)
extern "C" __global__ void ema_lerp(float* __restrict__ e, const float* __restrict__ net,
                                    float beta, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    e[i] = __fadd_rn(net[i], __fmul_rn(__fsub_rn(e[i], net[i]), beta));
}
