// The tile kernels of spike_matmul_cpu.cpp. Deliberately without include guard or includes: the .cpp
// compiles this file three times, for three instruction sets (cpu_isa_instantiate.h). Needs ChunkedCsc,
// kTile and kChunk declared before.

// A GCC vector of 16 floats: one AVX-512 register, two AVX2 or four SSE registers, as the target has.
typedef float v16 __attribute__((vector_size(64)));

// buf[s, 0:kTile] = (first ? 0 : buf[s, :]) + the sum over column s's nonzeros in row chunk c of
// value * pack[row, :], for every spike column s. pack is the chunk's [kChunk, kTile] slice of the dense
// operand (32 KiB: stays in L1 while the index lists stream past). Two interleaved sets of accumulators
// halve the chain of dependent adds; kBinary (every value is 1, as for spikes) skips the multiplies.
// pack and buf are 64-byte aligned with rows of kTile floats.
template <bool kBinary>
void chunk_product(const ChunkedCsc& m, int64_t c, const float* pack, float* buf, bool first) {
  const int32_t* ptr = m.ptr.data() + c * (m.cols + 1);
  const uint8_t* rows = m.rows.data();
  const float* vals = m.vals.data();
  for (int64_t s = 0; s < m.cols; ++s) {
    v16 a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
    int32_t k = ptr[s];
    const int32_t end = ptr[s + 1];
    for (; k + 1 < end; k += 2) {
      const v16* x = reinterpret_cast<const v16*>(pack + rows[k] * kTile);
      const v16* y = reinterpret_cast<const v16*>(pack + rows[k + 1] * kTile);
      if (kBinary) {
        a0 += x[0], a1 += x[1], a2 += x[2], a3 += x[3];
        b0 += y[0], b1 += y[1], b2 += y[2], b3 += y[3];
      } else {
        const float u = vals[k], w = vals[k + 1];
        a0 += u * x[0], a1 += u * x[1], a2 += u * x[2], a3 += u * x[3];
        b0 += w * y[0], b1 += w * y[1], b2 += w * y[2], b3 += w * y[3];
      }
    }
    if (k < end) {
      const v16* x = reinterpret_cast<const v16*>(pack + rows[k] * kTile);
      const float u = kBinary ? 1.0f : vals[k];
      a0 += u * x[0], a1 += u * x[1], a2 += u * x[2], a3 += u * x[3];
    }
    v16* o = reinterpret_cast<v16*>(buf + s * kTile);
    if (first) {
      o[0] = a0 + b0, o[1] = a1 + b1, o[2] = a2 + b2, o[3] = a3 + b3;
    } else {
      o[0] += a0 + b0, o[1] += a1 + b1, o[2] += a2 + b2, o[3] += a3 + b3;
    }
  }
}
