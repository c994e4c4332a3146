"""Peak FLOP/s for model FLOPs utilisation (MFU): a table for known GPUs, a measurement otherwise.

MFU = flops_per_token x tokens/s / peak. On CUDA the peak is the device's dense bf16 (fp16) tensor-
core figure from its datasheet; on a CPU (or an unknown GPU) it is measured in the same run by timing
a large matmul, so the figure says how close training comes to what this machine's matmul can do.
A measured peak is the best of several timings; if training ever beats it (the machine was busy when
it was measured), `PeakMeter` measures again and keeps the higher figure, and it never reports a
utilisation above 100%.
"""

from __future__ import annotations

import time

import torch

# Dense (no sparsity) bf16/fp16 tensor-core peaks, TFLOP/s, from the vendors' datasheets.
CUDA_PEAK_TFLOPS = {  # matched by substring, first match wins: more specific names first
    "GH200": 989.0,
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM: "NVIDIA H100 80GB HBM3"
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 125.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,
    "T4": 65.0,
}


def cuda_table_peak(name: str) -> float | None:
    """FLOP/s for a device name like 'NVIDIA H100 80GB HBM3', or None if not in the table."""
    for key, tflops in CUDA_PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024,
                        seconds: float = 0.5) -> float:
    """FLOP/s of a square matmul on `device`, best of the timed repeats that fit in `seconds`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t) / 4)
        if time.perf_counter() > deadline:
            break
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """The peak FLOP/s to divide by, and where it came from (for the log)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = cuda_table_peak(name)
        if peak is not None:
            if dtype == torch.float32:
                return peak, f"{name}: datasheet dense bf16 peak {peak / 1e12:.0f} TFLOP/s (run is fp32)"
            return peak, f"{name}: datasheet dense bf16 peak {peak / 1e12:.0f} TFLOP/s"
        peak = measure_matmul_peak(device, dtype, n=4096)
        return peak, f"{name}: not in the table, measured {dtype} matmul {peak / 1e12:.1f} TFLOP/s"
    peak = measure_matmul_peak(device, torch.float32)
    return peak, f"{device.type}: measured fp32 matmul {peak / 1e9:.1f} GFLOP/s"


class PeakMeter:
    """The peak a run's MFU is measured against (all ranks), re-measured when a step beats it."""

    def __init__(self, device: torch.device, dtype: torch.dtype, world_size: int = 1):
        self.device, self.dtype, self.world_size = device, dtype, world_size
        peak, self.note = peak_flops(device, dtype)
        self.measured = self.device.type != "cuda" or "measured" in self.note
        self.peak = peak * world_size

    def utilisation(self, flops_per_s: float) -> float | None:
        """``flops_per_s / peak`` in [0, 1], or None when the peak cannot be trusted."""
        if flops_per_s > self.peak and self.measured:
            again, self.note = peak_flops(self.device, self.dtype)
            self.peak = max(self.peak, again * self.world_size)
        ratio = flops_per_s / self.peak
        return ratio if ratio <= 1.0 else None
