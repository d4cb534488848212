// GroupNorm -> per-(sample, channel) affine -> optional SiLU, forward and backward (issue 17):
// the CUDA twin of src/model/ops/group_norm.rs, same formulas.
//
//   y = act(x^ * a[b,c] + d[b,c]),  x^ = (x - mean_{b,g}) * rstd_{b,g},  act in {id, SiLU}
//
// x, y, dy, dx: [B, C, HW] in T (float or bfloat16); ad: [2, B, C] float (a, then d).
// Statistics are two-pass (mean, then the mean squared deviation) in float32, one block
// per (sample, group); a group's channels are contiguous, so block `bg` owns elements
// [bg * cg * HW, (bg + 1) * cg * HW). Nothing but x is kept for the backward, which
// recomputes the statistics and z:
//
//   1. gn_bwd_sums (one block per group): mean, rstd, per channel da = sum dz * x^ and
//      dd = sum dz (dz = dy * act'(z)), m1 = sum_c a * dd / n, m2 = sum_c a * da / n.
//      Writes side = [da (BC) | dd (BC) | a (BC) | d (BC) | mean, rstd, m1, m2 (4 * BG)].
//   2. gn_bwd_dx (element-wise, a block per slice of one channel plane; the same arguments
//      as gn_bwd_sums, with side in the place of ad):
//      dx = rstd * (dz * a - m1 - x^ * m2).
#include "common.cuh"

__device__ __forceinline__ float sigmoid(float z) { return 1.f / (1.f + expf(-z)); }

// Mean and 1/sqrt(var + eps) of the n elements at xg; every thread gets both.
template <typename T>
__device__ __forceinline__ float2 group_stats(const T* xg, int n, float eps, float* scratch) {
  float s = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += to_f(xg[i]);
  const float mean = block_sum(s, scratch) / (float)n;
  s = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float dv = to_f(xg[i]) - mean;
    s += dv * dv;
  }
  const float var = block_sum(s, scratch) / (float)n;
  return make_float2(mean, 1.f / sqrtf(var + eps));
}

template <typename T>
__device__ void gn_fwd(const T* __restrict__ x, const float* __restrict__ ad, T* __restrict__ y,
                       int bc, int cg, int hw, float eps, int silu) {
  __shared__ float scratch[32];
  const int bg = blockIdx.x;
  const int n = cg * hw;
  const size_t base = (size_t)bg * n;
  const float2 st = group_stats(x + base, n, eps, scratch);
  for (int j = 0; j < cg; ++j) {
    const int ch = bg * cg + j;
    const float a = ad[ch] * st.y, d = ad[bc + ch];
    const T* xr = x + base + (size_t)j * hw;
    T* yr = y + base + (size_t)j * hw;
    for (int i = threadIdx.x; i < hw; i += blockDim.x) {
      float z = (to_f(xr[i]) - st.x) * a + d;
      if (silu) z = z * sigmoid(z);
      yr[i] = from_f<T>(z);
    }
  }
}

// dz = dy * act'(z) for z = x^ * a + d.
__device__ __forceinline__ float dz_of(float g, float xh, float a, float d, int silu) {
  if (!silu) return g;
  const float z = xh * a + d;
  const float s = sigmoid(z);
  return g * s * (1.f + z * (1.f - s));
}

template <typename T>
__device__ void gn_bwd_sums(const T* __restrict__ x, const float* __restrict__ ad,
                            const T* __restrict__ dy, float* __restrict__ side, int bc, int bgs,
                            int cg, int hw, float eps, int silu) {
  __shared__ float scratch[64];
  const int bg = blockIdx.x;
  const int n = cg * hw;
  const size_t base = (size_t)bg * n;
  const float2 st = group_stats(x + base, n, eps, scratch);
  float m1 = 0.f, m2 = 0.f;  // meaningful in thread 0 only
  for (int j = 0; j < cg; ++j) {
    const int ch = bg * cg + j;
    const float a = ad[ch], d = ad[bc + ch];
    const T* xr = x + base + (size_t)j * hw;
    const T* gr = dy + base + (size_t)j * hw;
    float da = 0.f, dd = 0.f;
    for (int i = threadIdx.x; i < hw; i += blockDim.x) {
      const float xh = (to_f(xr[i]) - st.x) * st.y;
      const float dz = dz_of(to_f(gr[i]), xh, a, d, silu);
      da += dz * xh;
      dd += dz;
    }
    const float2 s = block_sum2(da, dd, scratch);
    if (threadIdx.x == 0) {
      side[ch] = s.x;
      side[bc + ch] = s.y;
      side[2 * bc + ch] = a;
      side[3 * bc + ch] = d;
      m1 += a * s.y;
      m2 += a * s.x;
    }
  }
  if (threadIdx.x == 0) {
    float* gs = side + 4 * (size_t)bc;
    gs[bg] = st.x;
    gs[bgs + bg] = st.y;
    gs[2 * bgs + bg] = m1 / (float)n;
    gs[3 * bgs + bg] = m2 / (float)n;
  }
}

// Grid: x over the B*C channel planes, y (with a stride loop) over slices of a plane.
// The arguments are gn_bwd_sums' (side in the place of ad; eps unused).
template <typename T>
__device__ void gn_bwd_dx(const T* __restrict__ x, const float* __restrict__ side,
                          const T* __restrict__ dy, T* __restrict__ dx, int bc, int bgs,
                          int cg, int hw, int silu) {
  const int p = blockIdx.x;  // b * C + c
  const int bg = p / cg;
  const float a = side[2 * bc + p], d = side[3 * bc + p];
  const float* gs = side + 4 * (size_t)bc;
  const float mean = gs[bg], rstd = gs[bgs + bg], m1 = gs[2 * bgs + bg], m2 = gs[3 * bgs + bg];
  const size_t base = (size_t)p * hw;
  for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < hw; i += gridDim.y * blockDim.x) {
    const float xh = (to_f(x[base + i]) - mean) * rstd;
    const float dz = dz_of(to_f(dy[base + i]), xh, a, d, silu);
    dx[base + i] = from_f<T>(rstd * (dz * a - m1 - xh * m2));
  }
}

#define GN_KERNELS(T, S)                                                                     \
  extern "C" __global__ void gn_fwd_##S(const T* x, const float* ad, T* y, int bc, int cg,   \
                                        int hw, float eps, int silu) {                       \
    gn_fwd<T>(x, ad, y, bc, cg, hw, eps, silu);                                              \
  }                                                                                          \
  extern "C" __global__ void gn_bwd_sums_##S(const T* x, const float* ad, const T* dy,       \
                                             float* side, int bc, int bgs, int cg, int hw,   \
                                             float eps, int silu) {                          \
    gn_bwd_sums<T>(x, ad, dy, side, bc, bgs, cg, hw, eps, silu);                             \
  }                                                                                          \
  extern "C" __global__ void gn_bwd_dx_##S(const T* x, const float* side, const T* dy,       \
                                           T* dx, int bc, int bgs, int cg, int hw, float eps, \
                                           int silu) {                                        \
    gn_bwd_dx<T>(x, side, dy, dx, bc, bgs, cg, hw, silu);                                    \
  }

GN_KERNELS(float, f32)
GN_KERNELS(__nv_bfloat16, bf16)
