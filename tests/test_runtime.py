"""Device choice and CPU abilities: `auto` falls back in one line naming the cause, `cuda` that
cannot work is refused with the fix; the int8 scheme follows the CPU's flags. The CUDA cases are
simulated (no GPU here): PyTorch's view and onnxruntime's build are monkeypatched."""

import onnxruntime as ort
import pytest
import torch

import export.machine as machine
import export.runtime as runtime
from distill.errors import UserError
from export.runtime import ORT_CUDA13_INSTALL, cuda_problem, resolve_device


@pytest.fixture
def gpu_here(monkeypatch):
    """PyTorch sees a GPU and uses CUDA 13; onnxruntime is the CPU package alone."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(runtime, "_installed", lambda d: "1.32.0" if d == "onnxruntime" else None)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [runtime.CPU])
    monkeypatch.setattr(runtime, "_ort_cuda_build", lambda: None)
    return monkeypatch


def test_cpu_is_cpu_and_unknown_devices_are_refused():
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match="auto, cpu or cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_auto_is_the_cpu_silently_and_cuda_is_refused():
    said = []
    assert resolve_device("auto", said.append) == "cpu" and said == []
    with pytest.raises(UserError, match="PyTorch sees no CUDA GPU"):
        resolve_device("cuda")


def test_cpu_package_beside_a_gpu_falls_back_in_one_line(gpu_here):
    said = []
    assert resolve_device("auto", said.append) == "cpu"
    assert len(said) == 1 and "no CUDA provider" in said[0] and ORT_CUDA13_INSTALL in said[0]
    with pytest.raises(UserError) as info:
        resolve_device("cuda")
    assert "onnxruntime-gpu" in str(info.value) and "--device cpu" in str(info.value)


def test_a_cuda_12_build_beside_cuda_13_torch_names_both(gpu_here):
    gpu_here.setattr(runtime, "_installed", lambda d: "1.24.1" if d == "onnxruntime-gpu" else None)
    gpu_here.setattr(ort, "get_available_providers", lambda: [runtime.CUDA, runtime.CPU])
    gpu_here.setattr(runtime, "_ort_cuda_build", lambda: "12.8")
    problem = cuda_problem()
    assert "built for CUDA 12.8" in problem and "uses CUDA 13.0" in problem
    assert (
        ORT_CUDA13_INSTALL in problem and "pip uninstall -y onnxruntime onnxruntime-gpu" in problem
    )
    said = []
    assert resolve_device("auto", said.append) == "cpu" and said[0].startswith("onnxruntime runs")


def test_both_packages_installed_is_named(gpu_here):
    gpu_here.setattr(runtime, "_installed", lambda d: "1.32.0")
    assert "both installed" in cuda_problem()


def test_a_cuda_provider_is_used_whatever_the_package_metadata_says(gpu_here):
    # Metadata of both packages (a GPU build installed over the CPU one), but the provider works.
    gpu_here.setattr(runtime, "_installed", lambda d: "1.32.0")
    gpu_here.setattr(ort, "get_available_providers", lambda: [runtime.CUDA, runtime.CPU])
    assert cuda_problem() is None and resolve_device("auto") == "cuda"


def test_a_matching_build_is_chosen_by_auto(gpu_here):
    gpu_here.setattr(runtime, "_installed", lambda d: "1.32.0" if d == "onnxruntime-gpu" else None)
    gpu_here.setattr(ort, "get_available_providers", lambda: [runtime.CUDA, runtime.CPU])
    gpu_here.setattr(runtime, "_ort_cuda_build", lambda: "13.0")
    assert cuda_problem() is None and resolve_device("auto") == "cuda"


@pytest.mark.parametrize(
    "flags, arch, reduce",
    [
        ({"avx2", "avx512_vnni"}, "x86_64", False),
        ({"avx2", "avx_vnni"}, "x86_64", False),
        ({"avx2", "amx_int8"}, "x86_64", False),
        ({"avx2", "fma"}, "x86_64", True),  # older x86: uint8 x int8 pairs saturate int16
        ({"asimd"}, "aarch64", False),
    ],
)
def test_int8_reduce_range_follows_vnni(monkeypatch, flags, arch, reduce):
    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("test cpu", frozenset(flags)))
    monkeypatch.setattr(machine.platform, "machine", lambda: arch)
    assert machine.int8_reduce_range() is reduce


def test_cpu_facts_and_a_peak_probe():
    assert machine.cpu_model()
    assert set(machine.cpu_flags()) <= set(machine.RELEVANT_FLAGS)
    assert machine.matmul_peak_gflops(torch.float32, 1, seconds=0.0, n=128) > 0
    load = machine.loadavg()
    assert load is None or load >= 0
