// spike_matmul on the CPU: spikes^T @ dense that touches only the spikes' nonzeros (the two products of
// the STDP weight update, bdh_kernels/stdp.py).
//
//   P[s, d] = sum_r spikes[r, s] * dense[r, d]        (spikes [R, S], dense [R, D], P [S, D])
//   out     = alpha * P (alpha * P^T when transposed) + (out when accumulate, else nothing: out's old
//             contents are never read then, as BLAS's beta = 0)
//
// With spike probability p a GEMM does R*S*D multiply-adds; this does p times as many adds, walking the
// spikes column by column. The spikes become a compressed-column index per chunk of kChunk rows (which
// rows of each column fire, and the values). Then every task owns kTile columns of the dense operand:
// for each row chunk it copies the chunk's [kChunk, kTile] slice into a 32 KiB buffer, which stays in L1,
// and for every spike column adds up the buffer rows its index lists (spike_matmul_cpu_kernels.h, 16-wide
// vectors); the [S, kTile] sums stay in L2 until the last chunk. The order of every sum is fixed, so the
// result does not depend on the thread count. Above kMaxDensity (where the adds stop paying for the index)
// or for sizes the 32-bit index cannot hold, the op is a BLAS GEMM instead.
//
// Measured on 2 cores (AVX-512), R = 2048, S = D = 1024: 4.0 ms per product against 13.7 ms for torch.mm
// at p = 0.1 (benchmarks/bench_stdp.py, BENCHMARKS.md).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_isa.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace bdh {
namespace {

constexpr int64_t kTile = 64;       // dense columns per task: four 16-float vectors
constexpr int64_t kChunk = 128;     // spike rows per chunk: a [kChunk, kTile] fp32 slice is 32 KiB
constexpr double kMaxDensity = 0.25;  // more nonzeros: the GEMM (timed by hand while choosing it, at
                                      // 2048 x 1024 x 1024 on 2 cores: the adds cost as much as the GEMM
                                      // at about 30% graded, 50% binary)

// The spikes' nonzeros, by row chunk then column: chunk c's column s holds entries ptr[c*(cols+1) + s]
// up to ptr[c*(cols+1) + s + 1] of rows (the row within the chunk) and vals, rows ascending.
struct ChunkedCsc {
  int64_t cols = 0, chunks = 0, nnz = 0;
  std::vector<int32_t> ptr;
  std::vector<uint8_t> rows;
  std::vector<float> vals;
  bool binary = true;  // every nonzero is 1
};

#define BDH_CPU_KERNELS "spike_matmul_cpu_kernels.h"
#include "cpu_isa_instantiate.h"

// Appends row r's nonzeros in columns [s0, s1) to their columns' lists at pos. Returns whether all are 1.
bool append_row_scalar(const float* row, int64_t s0, int64_t s1, uint8_t r, int32_t* pos, uint8_t* rows,
                       float* vals) {
  bool binary = true;
  for (int64_t s = s0; s < s1; ++s) {
    if (row[s] != 0.0f) {
      const int32_t k = pos[s]++;
      rows[k] = r;
      vals[k] = row[s];
      binary &= row[s] == 1.0f;
    }
  }
  return binary;
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same, 16 columns per compare: at 10% density most groups hold one or two nonzeros.
__attribute__((target("avx512f"))) bool append_row_avx512(const float* row, int64_t cols, uint8_t r,
                                                          int32_t* pos, uint8_t* rows, float* vals) {
  bool binary = true;
  int64_t s = 0;
  for (; s + 16 <= cols; s += 16) {
    uint32_t nonzero = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + s), _mm512_setzero_ps(), _CMP_NEQ_UQ);
    while (nonzero) {
      const int j = __builtin_ctz(nonzero);
      nonzero &= nonzero - 1;
      const int32_t k = pos[s + j]++;
      rows[k] = r;
      vals[k] = row[s + j];
      binary &= row[s + j] == 1.0f;
    }
  }
  return append_row_scalar(row, s, cols, r, pos, rows, vals) && binary;
}
#endif

bool append_row(const float* row, int64_t cols, uint8_t r, int32_t* pos, uint8_t* rows, float* vals) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_isa() == Isa::kAvx512) return append_row_avx512(row, cols, r, pos, rows, vals);
#endif
  return append_row_scalar(row, 0, cols, r, pos, rows, vals);
}

// Counts the nonzeros of every (chunk, column) into m.ptr (as offsets, not yet filled) and m.nnz.
void count_nonzeros(const float* spikes, int64_t R, ChunkedCsc& m) {
  const int64_t S = m.cols;
  m.ptr.assign(m.chunks * (S + 1), 0);
  at::parallel_for(0, m.chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int32_t* count = m.ptr.data() + c * (S + 1) + 1;
      for (int64_t r = c * kChunk; r < std::min(R, (c + 1) * kChunk); ++r) {
        const float* row = spikes + r * S;
        for (int64_t s = 0; s < S; ++s) count[s] += row[s] != 0.0f;  // vectorised
      }
    }
  });
  int32_t total = 0;  // prefix sums over (chunk, column): the absolute start of every list
  for (int64_t c = 0; c < m.chunks; ++c) {
    int32_t* p = m.ptr.data() + c * (S + 1);
    p[0] = total;
    for (int64_t s = 0; s < S; ++s) p[s + 1] += p[s];
    total = p[S];
  }
  m.nnz = total;
}

void fill_lists(const float* spikes, int64_t R, ChunkedCsc& m) {
  const int64_t S = m.cols;
  m.rows.resize(m.nnz);
  m.vals.resize(m.nnz);
  std::vector<char> binary(m.chunks, 1);
  at::parallel_for(0, m.chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<int32_t> pos(S);
    for (int64_t c = c0; c < c1; ++c) {
      std::copy_n(m.ptr.data() + c * (S + 1), S, pos.begin());
      for (int64_t r = c * kChunk; r < std::min(R, (c + 1) * kChunk); ++r) {
        binary[c] &= append_row(spikes + r * S, S, static_cast<uint8_t>(r - c * kChunk), pos.data(),
                                m.rows.data(), m.vals.data());
      }
    }
  });
  m.binary = std::all_of(binary.begin(), binary.end(), [](char b) { return b != 0; });
}

// One task's kTile dense columns [d0, d0 + nd): the sums of every spike column into buf ([S, kTile]).
void tile_sums(const ChunkedCsc& m, const float* dense, int64_t R, int64_t D, int64_t d0, int64_t nd,
               float* pack, float* buf) {
  const auto product = m.binary ? for_this_cpu(&generic::chunk_product<true>, &avx2::chunk_product<true>,
                                               &avx512::chunk_product<true>)
                                : for_this_cpu(&generic::chunk_product<false>, &avx2::chunk_product<false>,
                                               &avx512::chunk_product<false>);
  if (m.chunks == 0) std::fill(buf, buf + m.cols * kTile, 0.0f);  // no rows: the sums are empty
  for (int64_t c = 0; c < m.chunks; ++c) {
    const int64_t r0 = c * kChunk, r1 = std::min(R, r0 + kChunk);
    for (int64_t r = r0; r < r1; ++r) {  // the last tile's columns past D are zeros
      std::copy_n(dense + r * D + d0, nd, pack + (r - r0) * kTile);
      std::fill(pack + (r - r0) * kTile + nd, pack + (r - r0 + 1) * kTile, 0.0f);
    }
    product(m, c, pack, buf, c == 0);
  }
}

// out[s, d] (out[d, s] when transposed) = alpha * buf[s, d - d0] (+ out[...] when accumulate).
void write_tile(const float* buf, int64_t S, int64_t D, int64_t d0, int64_t nd, float alpha, bool transposed,
                bool accumulate, float* out) {
  const auto put = [&](int64_t at, float v) { out[at] = accumulate ? out[at] + alpha * v : alpha * v; };
  if (!transposed) {
    for (int64_t s = 0; s < S; ++s)
      for (int64_t j = 0; j < nd; ++j) put(s * D + d0 + j, buf[s * kTile + j]);
  } else {
    for (int64_t j = 0; j < nd; ++j)
      for (int64_t s = 0; s < S; ++s) put((d0 + j) * S + s, buf[s * kTile + j]);
  }
}

void blas_matmul(const at::Tensor& out, const at::Tensor& spikes, const at::Tensor& dense, double alpha,
                 bool transposed, bool accumulate) {
  const at::Tensor a = transposed ? dense.t() : spikes.t(), b = transposed ? spikes : dense;
  out.addmm_(a, b, accumulate ? 1.0 : 0.0, alpha);
}

void spike_matmul_cpu(const at::Tensor& out, const at::Tensor& spikes_in, const at::Tensor& dense_in, double alpha,
                      bool transposed, bool accumulate) {
  TORCH_CHECK(spikes_in.dim() == 2 && dense_in.dim() == 2 && spikes_in.size(0) == dense_in.size(0),
              "spike_matmul: spikes [R, S] and dense [R, D] must be matrices with the same rows, got ",
              spikes_in.sizes(), " and ", dense_in.sizes());
  TORCH_CHECK(spikes_in.scalar_type() == at::kFloat && dense_in.scalar_type() == at::kFloat &&
                  out.scalar_type() == at::kFloat,
              "spike_matmul: out, spikes and dense must be float32, got ", out.scalar_type(), ", ",
              spikes_in.scalar_type(), " and ", dense_in.scalar_type());
  const int64_t R = spikes_in.size(0), S = spikes_in.size(1), D = dense_in.size(1);
  const std::vector<int64_t> shape = transposed ? std::vector<int64_t>{D, S} : std::vector<int64_t>{S, D};
  TORCH_CHECK(out.sizes() == at::IntArrayRef(shape) && out.is_contiguous(), "spike_matmul: out must be a contiguous ",
              at::IntArrayRef(shape), " tensor, got ", out.sizes());
  if (R * S >= std::numeric_limits<int32_t>::max()) return blas_matmul(out, spikes_in, dense_in, alpha, transposed, accumulate);
  const at::Tensor spikes = spikes_in.contiguous(), dense = dense_in.contiguous();
  ChunkedCsc m;
  m.cols = S;
  m.chunks = (R + kChunk - 1) / kChunk;
  count_nonzeros(spikes.const_data_ptr<float>(), R, m);
  if (m.nnz > kMaxDensity * static_cast<double>(R * S)) return blas_matmul(out, spikes, dense, alpha, transposed, accumulate);
  fill_lists(spikes.const_data_ptr<float>(), R, m);

  float* o = out.mutable_data_ptr<float>();
  const float* dp = dense.const_data_ptr<float>();
  at::parallel_for(0, (D + kTile - 1) / kTile, 1, [&](int64_t t0, int64_t t1) {
    // 64-byte aligned scratch: the kernels load and store whole 16-float vectors
    std::vector<float> scratch(kChunk * kTile + S * kTile + 16);
    float* pack = scratch.data() + (-reinterpret_cast<uintptr_t>(scratch.data()) / sizeof(float) & 15);
    float* buf = pack + kChunk * kTile;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t d0 = t * kTile, nd = std::min(kTile, D - d0);
      tile_sums(m, dp, R, D, d0, nd, pack, buf);
      write_tile(buf, S, D, d0, nd, static_cast<float>(alpha), transposed, accumulate, o);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(bdh, CPU, m) { m.impl("spike_matmul", &spike_matmul_cpu); }

}  // namespace bdh
