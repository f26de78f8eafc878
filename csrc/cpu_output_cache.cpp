// The cache of large CPU output buffers: see cpu_output_cache.h.
#include "cpu_output_cache.h"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <list>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

namespace bdh {
namespace {

constexpr size_t kMinCachedBytes = size_t(4) << 20;
constexpr size_t kPageBytes = 4096;  // buffers are whole pages; a cached one serves a request of its size

size_t cache_limit_bytes() {
  const char* v = std::getenv("BDH_KERNELS_CPU_CACHE_MB");
  if (!v || !*v) return size_t(1024) << 20;
  char* end = nullptr;
  errno = 0;
  const long long mb = std::strtoll(v, &end, 10);
  TORCH_CHECK(*end == '\0' && mb >= 0, "BDH_KERNELS_CPU_CACHE_MB must be a whole number of MiB >= 0, got '", v, "'");
  // more MiB than an address space holds (or than strtoll reads) is no limit, not a wrapped-around one
  if (errno == ERANGE || static_cast<unsigned long long>(mb) > (SIZE_MAX >> 20)) return SIZE_MAX;
  return size_t(mb) << 20;
}

// A c10::Allocator, so the tensors it backs are ordinary resizable CPU tensors; each DataPtr's deleter
// hands its buffer back here.
class OutputCache final : public c10::Allocator {
 public:
  static OutputCache& instance() {
    static OutputCache* cache = new OutputCache();  // never destroyed: outputs may outlive static teardown
    return *cache;
  }

  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < kMinCachedBytes || limit_ == 0) return c10::GetCPUAllocator()->allocate(bytes);
    const size_t size = (bytes + kPageBytes - 1) / kPageBytes * kPageBytes;
    void* p = take(size);
    if (!p) p = fresh(size);
    report(p, static_cast<int64_t>(size));
    return {p, p, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t release_all() {
    std::vector<void*> freed;
    size_t released = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      released = evict_until(0, freed);
    }
    for (void* p : freed) std::free(p);
    return static_cast<int64_t>(released);
  }

 private:
  OutputCache() : limit_(cache_limit_bytes()) {}

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = cached_.begin(); it != cached_.end(); ++it) {  // newest first; a few entries at most
      if (it->first != size) continue;
      void* p = it->second;
      cached_.erase(it);
      cached_bytes_ -= size;
      in_use_bytes_ += size;
      return p;
    }
    return nullptr;
  }

  // A new buffer, its pages faulted in by contiguous chunks, one per thread. The kernels would fault them
  // in their own order, each task a few neurons of every time step, so that all threads fault pages of
  // the same rows at once; only a new buffer pays this, once. Short of memory, the cached buffers go first.
  void* fresh(size_t size) {
    void* p = nullptr;
    bool allocated = posix_memalign(&p, kPageBytes, size) == 0;
    if (!allocated && release_all() > 0) allocated = posix_memalign(&p, kPageBytes, size) == 0;
    TORCH_CHECK_WITH(OutOfMemoryError, allocated, "bdh_kernels: out of CPU memory allocating an output of ", size,
                     " bytes");
    char* bytes = static_cast<char*>(p);
    at::parallel_for(0, int64_t(size / kPageBytes), 64, [&](int64_t begin, int64_t end) {
      for (int64_t page = begin; page < end; ++page) bytes[page * kPageBytes] = 0;
    });
    std::lock_guard<std::mutex> lock(mutex_);
    sizes_[p] = size;
    in_use_bytes_ += size;
    return p;
  }

  static void give_back(void* p) { instance().put(p); }

  // A buffer back from its tensor: cached as the newest, the oldest evicted past the limit (so the cache
  // follows the sizes in use when they change, e.g. from training to evaluation).
  void put(void* p) {
    size_t size = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      size = sizes_.at(p);
      in_use_bytes_ -= size;
    }
    report(p, -static_cast<int64_t>(size));  // before another thread can take it again
    std::vector<void*> freed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (size > limit_) {
        sizes_.erase(p);
        freed.push_back(p);
      } else {
        cached_.emplace_front(size, p);
        cached_bytes_ += size;
        evict_until(limit_, freed);
      }
    }
    for (void* q : freed) std::free(q);
  }

  // Drops the oldest cached buffers until at most `bytes` are cached; returns the bytes dropped and
  // leaves the buffers in `freed` for the caller to free outside the lock. Holds mutex_.
  size_t evict_until(size_t bytes, std::vector<void*>& freed) {
    size_t dropped = 0;
    while (cached_bytes_ > bytes) {
      auto [size, p] = cached_.back();
      cached_.pop_back();
      cached_bytes_ -= size;
      dropped += size;
      sizes_.erase(p);
      freed.push_back(p);
    }
    return dropped;
  }

  // To the torch profiler's memory records, as PyTorch's CPU allocator does for its tensors: + size when
  // a buffer goes to a tensor, - size when it comes back.
  void report(void* p, int64_t delta) {
    if (!c10::memoryProfilingEnabled()) return;
    size_t in_use = 0, held = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use = in_use_bytes_;
      held = in_use_bytes_ + cached_bytes_;
    }
    c10::reportMemoryUsageToProfiler(p, delta, in_use, held, c10::Device(c10::DeviceType::CPU));
  }

  const size_t limit_;
  std::mutex mutex_;
  std::unordered_map<void*, size_t> sizes_;      // every buffer of this cache, in use or cached
  std::list<std::pair<size_t, void*>> cached_;  // the cached ones (size, buffer), newest first
  size_t cached_bytes_ = 0, in_use_bytes_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_CHECK(options.device().is_cpu(), "empty_output is for CPU tensors");
  return at::detail::empty_generic(sizes, &OutputCache::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   options.dtype().toScalarType(), std::nullopt);
}

int64_t empty_output_cache() { return OutputCache::instance().release_all(); }

TORCH_LIBRARY_FRAGMENT(bdh, m) { m.def("empty_cpu_output_cache() -> int", &empty_output_cache); }

}  // namespace bdh
