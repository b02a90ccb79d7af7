// Kernels the static gates of tools/cuda_static_check.py must flag (tests/test_cuda_static.py),
// beside one they must pass.

// A 64-bit division and remainder: calls of the division routine.
__global__ void divides(const long long* in, long long* out, long long d) {
  out[threadIdx.x] = in[threadIdx.x] / d + in[threadIdx.x + 256] % d;
}

// 300 values live at once: more than the 255 registers a thread has, so ptxas spills.
__global__ void spills(const float* in, float* out) {
  float v[300], total = 0;
#pragma unroll
  for (int i = 0; i < 300; ++i) total += v[i] = in[i * 256 + threadIdx.x];
  float s = 0;
#pragma unroll
  for (int i = 0; i < 300; ++i) s = fmaf(s, total, v[299 - i]);
  out[threadIdx.x] = s;
}

// Input and output pointers inside struct parameters (pointer + stride): __restrict__ does
// not reach them, so the input's loads are plain ld.global, not the read-only ld.global.nc.
template <typename T>
struct Operand {
  T* __restrict__ data;
  int stride;
};
__global__ void packed(Operand<const float> in, Operand<float> out) {
  out.data[threadIdx.x * out.stride] = 2 * in.data[threadIdx.x * in.stride] + in.data[threadIdx.x * in.stride + 1];
}

__global__ void clean(const float* __restrict__ in, float* __restrict__ out) { out[threadIdx.x] = 2 * in[threadIdx.x]; }
