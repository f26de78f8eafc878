"""Peak memory of one call, as the STDP benchmarks report it (and tests/test_stdp.py checks the measure)."""
import torch


def peak_cpu_bytes(fn):
    """Peak bytes held by tensors allocated inside ``fn()`` (beyond what existed before), from the torch
    profiler's CPU memory records (each allocation and free with the allocator's running total)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = []

    def walk(node):
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    if not events:
        raise RuntimeError("the profiler recorded no CPU allocations")
    current = peak = 0
    for _, size in sorted(events):
        current += size
        peak = max(peak, current)
    return peak


def peak_gpu_bytes(fn):
    """Peak bytes allocated on the current GPU during ``fn()`` beyond what was allocated before."""
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    del out
    return torch.cuda.max_memory_allocated() - start
