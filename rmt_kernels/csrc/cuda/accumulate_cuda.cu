// CUDA kernels for the per-neuron masked accumulation. Arguments are validated by accumulate.cpp.
//
// Grid: x = (example, chunk of kRowsPerBlock positions), y = a block of kThreads neurons; one thread per
// neuron. Consecutive threads read consecutive neurons of one token row (coalesced), sum their chunk in
// double registers, then add it to the outputs with one double atomicAdd per statistic. The mask is read
// on the device, so nothing synchronises with the host.
#include "../accumulate.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>
#include <string>

namespace rmt {
namespace {

constexpr int kThreads = 256;
// Long enough that atomics (one per statistic per chunk) stay rare next to the loads, short enough
// that [8, 256, d] already gives 64 row blocks per neuron block.
constexpr int64_t kRowsPerBlock = 32;

template <typename T>
__device__ __forceinline__ double to_double(T x) {
  return static_cast<double>(static_cast<float>(x));
}

__device__ __forceinline__ void add_count(int64_t* p, int64_t v) {
  atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
}
__device__ __forceinline__ void add_count(double* p, int64_t v) { atomicAdd(p, static_cast<double>(v)); }

struct Tile {
  int64_t b, s0, s1, j;
};

__device__ __forceinline__ Tile tile(int64_t seq, int64_t chunks) {
  Tile t;
  t.b = blockIdx.x / chunks;
  t.s0 = (blockIdx.x % chunks) * kRowsPerBlock;
  t.s1 = t.s0 + kRowsPerBlock < seq ? t.s0 + kRowsPerBlock : seq;
  t.j = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  return t;
}

template <typename T, typename CountT, bool kExampleSums>
__global__ void __launch_bounds__(kThreads)
    accumulate_kernel(const T* __restrict__ acts, const bool* __restrict__ mask, int64_t seq, int64_t d,
                      int64_t chunks, double* __restrict__ sum, double* __restrict__ abs_sum,
                      double* __restrict__ sq_sum, CountT* __restrict__ pos_count,
                      double* __restrict__ example_sums) {
  const Tile t = tile(seq, chunks);
  if (t.j >= d) return;
  double s = 0.0, a = 0.0, q = 0.0;
  int64_t p = 0, n = 0;
  for (int64_t pos = t.s0; pos < t.s1; ++pos) {
    const int64_t row = t.b * seq + pos;
    if (!mask[row]) continue;
    const double x = to_double(acts[row * d + t.j]);
    s += x;
    a += fabs(x);
    q += x * x;
    p += x > 0.0 ? 1 : 0;
    ++n;
  }
  if (n == 0) return;  // all padding: spare the atomics
  atomicAdd(sum + t.j, s);
  atomicAdd(abs_sum + t.j, a);
  atomicAdd(sq_sum + t.j, q);
  add_count(pos_count + t.j, p);
  if constexpr (kExampleSums) atomicAdd(example_sums + t.b * d + t.j, s);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    accumulate_sq_diff_kernel(const T* __restrict__ acts_a, const T* __restrict__ acts_b,
                              const bool* __restrict__ mask, int64_t seq, int64_t d, int64_t chunks,
                              double* __restrict__ sq_sum) {
  const Tile t = tile(seq, chunks);
  if (t.j >= d) return;
  double q = 0.0;
  bool any = false;
  for (int64_t pos = t.s0; pos < t.s1; ++pos) {
    const int64_t row = t.b * seq + pos;
    if (!mask[row]) continue;
    const double x = to_double(acts_a[row * d + t.j]) - to_double(acts_b[row * d + t.j]);
    q += x * x;
    any = true;
  }
  if (any) atomicAdd(sq_sum + t.j, q);
}

// Grid for a [batch, seq, d] tensor; a zero-sized grid means there is nothing to launch.
dim3 make_grid(int64_t batch, int64_t seq, int64_t d, int64_t* chunks) {
  *chunks = (seq + kRowsPerBlock - 1) / kRowsPerBlock;
  const int64_t row_blocks = batch * *chunks, col_blocks = (d + kThreads - 1) / kThreads;
  // Numbers go in as strings, as in accumulate.cpp's checks (see the note there).
  TORCH_CHECK_VALUE(row_blocks <= std::numeric_limits<int32_t>::max(), "batch * ceil(seq / ",
                    std::to_string(kRowsPerBlock), ") must fit in 2^31 - 1 CUDA blocks, got ",
                    std::to_string(row_blocks));
  TORCH_CHECK_VALUE(col_blocks <= 65535, "d must be at most ", std::to_string(65535LL * kThreads),
                    " for the CUDA kernel, got ", std::to_string(d));
  return dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(col_blocks));
}

}  // namespace

void accumulate_cuda(const at::Tensor& acts, const at::Tensor& mask, at::Tensor& sum, at::Tensor& abs_sum,
                     at::Tensor& sq_sum, at::Tensor& pos_count, at::Tensor& tokens,
                     const std::optional<at::Tensor>& example_mean) {
  const c10::cuda::CUDAGuard guard(acts.device());
  const int64_t batch = acts.size(0), seq = acts.size(1), d = acts.size(2);
  int64_t chunks = 0;
  const dim3 grid = make_grid(batch, seq, d, &chunks);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor example_sums;
  if (example_mean) example_sums = at::zeros({batch, d}, acts.options().dtype(at::kDouble));
  if (grid.x > 0 && grid.y > 0) {
    RMT_DISPATCH_ACTS(acts.scalar_type(), "accumulate_cuda", [&] {
      const auto* x = acts.const_data_ptr<scalar_t>();
      const bool* m = mask.const_data_ptr<bool>();
      auto* s = sum.mutable_data_ptr<double>();
      auto* a = abs_sum.mutable_data_ptr<double>();
      auto* q = sq_sum.mutable_data_ptr<double>();
      auto launch = [&](auto* pos) {
        using CountT = std::remove_pointer_t<decltype(pos)>;
        if (example_mean)
          accumulate_kernel<scalar_t, CountT, true><<<grid, kThreads, 0, stream>>>(
              x, m, seq, d, chunks, s, a, q, pos, example_sums.mutable_data_ptr<double>());
        else
          accumulate_kernel<scalar_t, CountT, false><<<grid, kThreads, 0, stream>>>(x, m, seq, d, chunks, s, a, q,
                                                                                   pos, nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (pos_count.scalar_type() == at::kLong)
        launch(pos_count.mutable_data_ptr<int64_t>());
      else
        launch(pos_count.mutable_data_ptr<double>());
    });
  }
  // Token counts are cheap device reductions on the mask; doing them here keeps the kernel free of them.
  tokens.add_(mask.sum());
  if (example_mean) example_mean->copy_(example_sums / mask.sum(at::IntArrayRef{1}, /*keepdim=*/true).clamp_min(1));
}

void accumulate_sq_diff_cuda(const at::Tensor& acts_a, const at::Tensor& acts_b, const at::Tensor& mask,
                             at::Tensor& sq_sum, at::Tensor& tokens) {
  const c10::cuda::CUDAGuard guard(acts_a.device());
  const int64_t batch = acts_a.size(0), seq = acts_a.size(1), d = acts_a.size(2);
  int64_t chunks = 0;
  const dim3 grid = make_grid(batch, seq, d, &chunks);
  if (grid.x > 0 && grid.y > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    RMT_DISPATCH_ACTS(acts_a.scalar_type(), "accumulate_sq_diff_cuda", [&] {
      accumulate_sq_diff_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          acts_a.const_data_ptr<scalar_t>(), acts_b.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(), seq,
          d, chunks, sq_sum.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  tokens.add_(mask.sum());
}

}  // namespace rmt
