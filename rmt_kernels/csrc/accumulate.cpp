// Per-neuron masked accumulation and top-tau selection (CPU, OpenMP), plus the argument checks and
// device dispatch shared with the CUDA kernels. Python wrappers and pure-torch references: rmt_kernels/ops.py.
#include "accumulate.h"

#include <ATen/Parallel.h>
#include <c10/util/bit_cast.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

namespace rmt {
namespace {

// 256 float64 columns x 5 running sums = 10 KiB per thread: stays in L1 while each real token's row
// segment (0.5-1 KiB) streams through, and gives 2 threads enough blocks for d >= 1024.
constexpr int64_t kBlock = 256;
// Below this many elements an OpenMP fork costs more than the loop itself.
constexpr int64_t kMinParallelWork = 1 << 15;

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kDouble: return "float64";
    case at::kLong: return "int64";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

// Error messages format numbers, shapes and devices into strings here, never through std::ostream's integer
// insertion: on one GPU machine's toolchain (g++ 13.3 / nvcc 13.0 building against torch 2.11) that call crashed
// inside TORCH_CHECK's message formatting, turning a bad argument into a segfault instead of a Python error.
std::string num(int64_t x) { return std::to_string(x); }

std::string dims(at::IntArrayRef a) {
  std::string out = "[";
  for (size_t i = 0; i < a.size(); ++i) out += (i ? ", " : "") + num(a[i]);
  return out + "]";
}

void check_tensor(const at::Tensor& t, const char* name, std::initializer_list<at::ScalarType> dtypes,
                  at::IntArrayRef shape, const at::Device& device) {
  if (std::find(dtypes.begin(), dtypes.end(), t.scalar_type()) == dtypes.end()) {
    std::string expected;
    for (auto d : dtypes) expected += (expected.empty() ? "" : " or ") + dtype_name(d);
    TORCH_CHECK_TYPE(false, name, " must have dtype ", expected, ", got ", dtype_name(t.scalar_type()));
  }
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", dims(shape), ", got ", dims(t.sizes()));
  TORCH_CHECK_VALUE(t.device() == device, name, " must be on ", device.str(), " like acts, got ", t.device().str());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous, got strides ", dims(t.strides()),
                    "; pass t.contiguous()");
}

void check_acts(const at::Tensor& acts, const char* name) {
  TORCH_CHECK_VALUE(acts.dim() == 3, name, " must be 3-D [batch, seq, d], got shape ", dims(acts.sizes()));
  check_tensor(acts, name, {at::kFloat, at::kBFloat16, at::kHalf}, acts.sizes(), acts.device());
  TORCH_CHECK_VALUE(acts.is_cpu() || acts.is_cuda(), name, " must be on a CPU or CUDA device, got ",
                    acts.device().str());
}

void check_tokens(const at::Tensor& tokens, const at::Device& device) {
  TORCH_CHECK_VALUE(tokens.dim() <= 1 && tokens.numel() == 1, "tokens must be a 0-dim or [1] tensor, got shape ",
                    dims(tokens.sizes()));
  check_tensor(tokens, "tokens", {at::kLong}, tokens.sizes(), device);
}

[[noreturn]] void no_cuda() {
  TORCH_CHECK(false, "rmt_kernels._C was built without CUDA; rebuild it on a machine where torch sees CUDA and "
              "nvcc is installed, or use rmt_kernels.set_backend('torch')");
}

// Real (unmasked) tokens, found in one pass over the mask so the kernels never touch padding rows.
struct RealRows {
  std::vector<int64_t> rows;           // flat index (example * seq + position) of each real token, in order
  std::vector<int64_t> example_begin;  // example b owns rows[example_begin[b] .. example_begin[b + 1])
};

RealRows collect_real_rows(const at::Tensor& mask) {
  const int64_t batch = mask.size(0), seq = mask.size(1);
  const bool* m = mask.const_data_ptr<bool>();
  RealRows real;
  real.rows.reserve(batch * seq);
  real.example_begin.reserve(batch + 1);
  for (int64_t b = 0; b < batch; ++b) {
    real.example_begin.push_back(static_cast<int64_t>(real.rows.size()));
    for (int64_t s = 0; s < seq; ++s)
      if (m[b * seq + s]) real.rows.push_back(b * seq + s);
  }
  real.example_begin.push_back(static_cast<int64_t>(real.rows.size()));
  return real;
}

template <typename T>
inline double to_double(T x) {
  return static_cast<double>(static_cast<float>(x));
}

// c10::Half's own conversion branches, which stops the loops below from vectorising (3-4x slower). Moving
// exponent and mantissa into place and scaling by 2^112 is exact for normals, subnormals and zero;
// inf/NaN only need their exponent saturated. Checked bit-for-bit against c10 for all 65536 values.
template <>
inline double to_double(c10::Half h) {
  const uint32_t x = h.x;
  const float scaled = c10::bit_cast<float>((x & 0x7fffu) << 13) * 0x1p112f;
  const uint32_t inf_nan = (x & 0x7c00u) == 0x7c00u ? 0x7f800000u : 0u;
  return c10::bit_cast<float>(c10::bit_cast<uint32_t>(scaled) | inf_nan | ((x & 0x8000u) << 16));
}

// The extension is built for baseline x86-64 (SSE2) so it runs anywhere; the inner loops also get AVX2 and
// AVX-512 clones, picked once at load time, which makes them 1.5-2x faster where the CPU has them.
#if defined(__x86_64__) && defined(__GNUC__)
#define RMT_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RMT_SIMD_CLONES
#endif

// Kept branch-free so the compiler vectorises it; kExampleMean is a template flag for the same reason.
template <typename T, bool kExampleMean>
RMT_SIMD_CLONES void accumulate_row(const T* __restrict__ row, int64_t w, double* __restrict__ s,
                                    double* __restrict__ a, double* __restrict__ q, double* __restrict__ p,
                                    double* __restrict__ e) {
  for (int64_t j = 0; j < w; ++j) {
    const double x = to_double(row[j]);
    s[j] += x;
    a[j] += std::abs(x);
    q[j] += x * x;
    p[j] += x > 0.0 ? 1.0 : 0.0;
    if constexpr (kExampleMean) e[j] += x;
  }
}

// Each thread owns whole column blocks, so the outputs are written without atomics or races.
template <typename T, typename CountT, bool kExampleMean>
void accumulate_cpu(const T* acts, const RealRows& real, int64_t d, double* sum, double* abs_sum, double* sq_sum,
                    CountT* pos_count, float* example_mean) {
  const int64_t n_blocks = (d + kBlock - 1) / kBlock;
  const int64_t batch = static_cast<int64_t>(real.example_begin.size()) - 1;
  const bool parallel = static_cast<int64_t>(real.rows.size()) * d >= kMinParallelWork;
  // Dynamic: when another process takes a core, the other thread picks up the remaining blocks instead of
  // the whole call waiting for the descheduled one.
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads()) if (parallel)
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    const int64_t j0 = blk * kBlock, w = std::min(kBlock, d - j0);
    alignas(64) double s[kBlock] = {}, a[kBlock] = {}, q[kBlock] = {}, p[kBlock] = {}, e[kBlock];
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t r0 = real.example_begin[b], r1 = real.example_begin[b + 1];
      if constexpr (kExampleMean) std::fill_n(e, w, 0.0);
      for (int64_t i = r0; i < r1; ++i)
        accumulate_row<T, kExampleMean>(acts + real.rows[i] * d + j0, w, s, a, q, p, e);
      if constexpr (kExampleMean) {
        float* out = example_mean + b * d + j0;
        const double n = static_cast<double>(r1 - r0);
        for (int64_t j = 0; j < w; ++j) out[j] = r1 > r0 ? static_cast<float>(e[j] / n) : 0.0f;
      }
    }
    for (int64_t j = 0; j < w; ++j) {
      sum[j0 + j] += s[j];
      abs_sum[j0 + j] += a[j];
      sq_sum[j0 + j] += q[j];
      pos_count[j0 + j] += static_cast<CountT>(p[j]);
    }
  }
}

template <typename T>
RMT_SIMD_CLONES void sq_diff_row(const T* __restrict__ a, const T* __restrict__ b, int64_t w, double* __restrict__ q) {
  for (int64_t j = 0; j < w; ++j) {
    const double x = to_double(a[j]) - to_double(b[j]);
    q[j] += x * x;
  }
}

template <typename T>
void accumulate_sq_diff_cpu(const T* acts_a, const T* acts_b, const RealRows& real, int64_t d, double* sq_sum) {
  const int64_t n_blocks = (d + kBlock - 1) / kBlock;
  const auto n_rows = static_cast<int64_t>(real.rows.size());
  const bool parallel = n_rows * d >= kMinParallelWork;
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads()) if (parallel)
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    const int64_t j0 = blk * kBlock, w = std::min(kBlock, d - j0);
    alignas(64) double q[kBlock] = {};
    for (int64_t i = 0; i < n_rows; ++i)
      sq_diff_row(acts_a + real.rows[i] * d + j0, acts_b + real.rows[i] * d + j0, w, q);
    for (int64_t j = 0; j < w; ++j) sq_sum[j0 + j] += q[j];
  }
}

void accumulate(const at::Tensor& acts, const at::Tensor& mask, at::Tensor& sum, at::Tensor& abs_sum,
                at::Tensor& sq_sum, at::Tensor& pos_count, at::Tensor& tokens,
                const std::optional<at::Tensor>& example_mean) {
  check_acts(acts, "acts");
  const int64_t batch = acts.size(0), seq = acts.size(1), d = acts.size(2);
  const auto device = acts.device();
  check_tensor(mask, "mask", {at::kBool}, {batch, seq}, device);
  check_tensor(sum, "sum", {at::kDouble}, {d}, device);
  check_tensor(abs_sum, "abs_sum", {at::kDouble}, {d}, device);
  check_tensor(sq_sum, "sq_sum", {at::kDouble}, {d}, device);
  check_tensor(pos_count, "pos_count", {at::kLong, at::kDouble}, {d}, device);
  check_tokens(tokens, device);
  if (example_mean) check_tensor(*example_mean, "example_mean", {at::kFloat}, {batch, d}, device);

  if (acts.is_cuda()) {
#ifdef RMT_WITH_CUDA
    accumulate_cuda(acts, mask, sum, abs_sum, sq_sum, pos_count, tokens, example_mean);
    return;
#else
    no_cuda();
#endif
  }
  const RealRows real = collect_real_rows(mask);
  float* mean_out = example_mean ? example_mean->mutable_data_ptr<float>() : nullptr;
  RMT_DISPATCH_ACTS(acts.scalar_type(), "accumulate_cpu", [&] {
    const auto* x = acts.const_data_ptr<scalar_t>();
    auto* s = sum.mutable_data_ptr<double>();
    auto* a = abs_sum.mutable_data_ptr<double>();
    auto* q = sq_sum.mutable_data_ptr<double>();
    auto run = [&](auto* pos) {
      using CountT = std::remove_pointer_t<decltype(pos)>;
      if (mean_out)
        accumulate_cpu<scalar_t, CountT, true>(x, real, d, s, a, q, pos, mean_out);
      else
        accumulate_cpu<scalar_t, CountT, false>(x, real, d, s, a, q, pos, nullptr);
    };
    if (pos_count.scalar_type() == at::kLong)
      run(pos_count.mutable_data_ptr<int64_t>());
    else
      run(pos_count.mutable_data_ptr<double>());
  });
  tokens.mutable_data_ptr<int64_t>()[0] += static_cast<int64_t>(real.rows.size());
}

void accumulate_sq_diff(const at::Tensor& acts_a, const at::Tensor& acts_b, const at::Tensor& mask,
                        at::Tensor& sq_sum, at::Tensor& tokens) {
  check_acts(acts_a, "acts_a");
  const int64_t batch = acts_a.size(0), seq = acts_a.size(1), d = acts_a.size(2);
  const auto device = acts_a.device();
  TORCH_CHECK_TYPE(acts_b.scalar_type() == acts_a.scalar_type(), "acts_b must have the dtype of acts_a (",
                   dtype_name(acts_a.scalar_type()), "), got ", dtype_name(acts_b.scalar_type()));
  check_tensor(acts_b, "acts_b", {acts_a.scalar_type()}, acts_a.sizes(), device);
  check_tensor(mask, "mask", {at::kBool}, {batch, seq}, device);
  check_tensor(sq_sum, "sq_sum", {at::kDouble}, {d}, device);
  check_tokens(tokens, device);

  if (acts_a.is_cuda()) {
#ifdef RMT_WITH_CUDA
    accumulate_sq_diff_cuda(acts_a, acts_b, mask, sq_sum, tokens);
    return;
#else
    no_cuda();
#endif
  }
  const RealRows real = collect_real_rows(mask);
  RMT_DISPATCH_ACTS(acts_a.scalar_type(), "accumulate_sq_diff_cpu", [&] {
    accumulate_sq_diff_cpu<scalar_t>(acts_a.const_data_ptr<scalar_t>(), acts_b.const_data_ptr<scalar_t>(), real, d,
                                     sq_sum.mutable_data_ptr<double>());
  });
  tokens.mutable_data_ptr<int64_t>()[0] += static_cast<int64_t>(real.rows.size());
}

// The k highest scores, ties broken by lower flat index; k is computed (and documented) in ops.py.
std::tuple<at::Tensor, double> top_tau(const at::Tensor& scores, int64_t k) {
  TORCH_CHECK_VALUE(scores.dim() == 2, "scores must be 2-D [layers, d], got shape ", dims(scores.sizes()));
  TORCH_CHECK_TYPE(at::isFloatingType(scores.scalar_type()), "scores must have a floating dtype, got ",
                   dtype_name(scores.scalar_type()));
  TORCH_CHECK_VALUE(scores.is_cpu(), "the C++ top_tau runs on CPU only, got scores on ", scores.device().str());
  TORCH_CHECK_VALUE(scores.is_contiguous(), "scores must be contiguous, got strides ", dims(scores.strides()));
  const int64_t n = scores.numel(), d = scores.size(1);
  TORCH_CHECK_VALUE(k >= 0 && k <= n, "k must be in [0, ", num(n), "], got ", num(k));

  std::vector<double> v(n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "top_tau", [&] {
    const auto* s = scores.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>(s[i]);
  });
  const auto nan = std::find_if(v.begin(), v.end(), [](double x) { return std::isnan(x); });
  TORCH_CHECK_VALUE(nan == v.end(), "scores contain NaN (first at layer ", num((nan - v.begin()) / d), ", unit ",
                    num((nan - v.begin()) % d), "); fix the scoring run before selecting neurons");

  auto indices = at::empty({k, 2}, at::kLong);
  if (k == 0) return {indices, std::numeric_limits<double>::infinity()};
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  // A strict total order (no NaN left), so nth_element + sort gives exactly the stable ranking.
  auto before = [&v](int64_t x, int64_t y) { return v[x] > v[y] || (v[x] == v[y] && x < y); };
  std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), before);
  std::sort(order.begin(), order.begin() + k, before);
  auto* out = indices.mutable_data_ptr<int64_t>();
  for (int64_t r = 0; r < k; ++r) {
    out[2 * r] = order[r] / d;
    out[2 * r + 1] = order[r] % d;
  }
  return {indices, v[order[k - 1]]};
}

}  // namespace
}  // namespace rmt

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  // The kernels touch no Python objects, so other Python threads (data loading) may run meanwhile.
  const auto no_gil = py::call_guard<py::gil_scoped_release>();
  m.doc() = "rm-tension kernels: per-neuron masked accumulation and top-tau selection (see rmt_kernels.ops)";
  m.def("accumulate_", &rmt::accumulate,
        "sum/abs_sum/sq_sum/pos_count[d] += stats of acts[batch, seq, d] over masked tokens; tokens += count",
        py::arg("acts"), py::arg("mask"), py::arg("sum"), py::arg("abs_sum"), py::arg("sq_sum"), py::arg("pos_count"),
        py::arg("tokens"), py::arg("example_mean") = py::none(), no_gil);
  m.def("accumulate_sq_diff_", &rmt::accumulate_sq_diff,
        "sq_sum[d] += sum over masked tokens of (acts_a - acts_b)^2; tokens += count", py::arg("acts_a"),
        py::arg("acts_b"), py::arg("mask"), py::arg("sq_sum"), py::arg("tokens"), no_gil);
  m.def("top_tau", &rmt::top_tau, "(indices [k, 2] of (layer, unit) by rank, threshold) of the k highest scores",
        py::arg("scores"), py::arg("k"), no_gil);
#ifdef RMT_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
