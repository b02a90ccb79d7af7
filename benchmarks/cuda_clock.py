"""The GPU benchmarks' clock (conftest.run_benchmark sets it as pytest-benchmark's timer),
in a module of its own so that tests/test_benchmark_tools.py can check it without a GPU."""

import torch


class CudaEventClock:
    """A clock read from CUDA events, for pytest-benchmark's timer on GPU: each reading
    records an event on the current stream and waits for it. A round's calls are launched
    back to back between two readings and timed on the device (as triton.testing.do_bench
    does), so no host synchronisation sits between two calls and the latency of the final
    one is not counted; gaps where the GPU waits for the host's launches are (they are the
    cost of a launch-bound step). Readings are seconds since the first one."""

    def __init__(self):
        self.origin = None

    def __call__(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        if self.origin is None:
            self.origin = event
        event.synchronize()
        return self.origin.elapsed_time(event) / 1e3  # elapsed_time is in milliseconds
