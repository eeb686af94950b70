"""What running an exported graph holds in memory per image, read from the ONNX file before
anything runs: the bench refuses a batch size its engines cannot hold together (batch 65,536 of
a CIFAR ResNet took 23 GB of a 24 GB machine before this).

The figure is a lower bound, whatever order or buffer reuse an engine chooses: while a node
runs, its inputs are live, and so is every tensor made before it that a later node still needs
(a residual block's shortcut while its two convolutions run). Its outputs count too, unless the
node could write them over an input that dies there (an in-place ReLU or Add); a convolution
never can.
"""

from __future__ import annotations

import os

import onnx

# Element sizes by the arithmetic an engine's kernels run in. An int8 file's dequantized floats
# are fused away by onnxruntime and OpenVINO: one byte each is what is certain.
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
# Ops whose output can never overwrite their input.
OUT_OF_PLACE = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "Gemm", "MatMul"}


def live_elements_per_image(path: str | os.PathLike) -> int:
    """The most elements per image (batch dimension excluded) a run of the graph must hold at
    once, the graph's own input not counted (the caller holds it)."""
    graph, sizes = _batched_tensors(path)
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    ancestors = _ancestors(nodes, producer)
    peak = 0
    for i, node in enumerate(nodes):
        live = 0
        for name, n in sizes.items():
            made = producer.get(name)
            if made is None or made == i:
                continue
            needed_here = i in consumers.get(name, ())
            needed_later = any((ancestors[c] >> i) & 1 for c in consumers.get(name, ()))
            if (needed_here or needed_later) and (ancestors[i] >> made) & 1:
                live += n
        outputs = sum(sizes.get(o, 0) for o in node.output)
        dies_here = [
            sizes.get(name, 0)
            for name in node.input
            if not any((ancestors[c] >> i) & 1 for c in consumers.get(name, ()))
        ]
        if node.op_type in OUT_OF_PLACE or outputs > max(dies_here, default=0):
            live += outputs
        peak = max(peak, live)
    return peak


def all_elements_per_image(path: str | os.PathLike) -> int:
    """Elements per image of every tensor the graph makes: what a calibrator that records each
    node's output for every image (onnxruntime's MinMax keeps them all) holds per image."""
    return sum(_batched_tensors(path)[1].values())


def _batched_tensors(path: str | os.PathLike) -> tuple[onnx.GraphProto, dict[str, int]]:
    """The graph with its shapes inferred, and elements per image of each tensor it makes that
    has a batch dimension and known other sizes."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    sizes = {v.name: _per_image(v) for v in [*graph.value_info, *graph.output]}
    return graph, {name: n for name, n in sizes.items() if n}


def _per_image(value: onnx.ValueInfoProto) -> int:
    """Elements per image of a [batch, ...] tensor with its other sizes known; 0 otherwise."""
    dims = value.type.tensor_type.shape.dim
    if (
        not dims
        or dims[0].HasField("dim_value")
        or not all(d.HasField("dim_value") for d in dims[1:])
    ):
        return 0
    n = 1
    for d in dims[1:]:
        n *= d.dim_value
    return n


def _ancestors(nodes: list, producer: dict[str, int]) -> list[int]:
    """For each node (in the file's topological order), a bitmask of the nodes it depends on."""
    masks: list[int] = []
    for node in nodes:
        mask = 0
        for name in node.input:
            j = producer.get(name)
            if j is not None:
                mask |= masks[j] | (1 << j)
        masks.append(mask)
    return masks


def bench_bytes(
    path: str | os.PathLike, input_elements: int, batch: int, engines: list, device: str
) -> int:
    """Bytes timing `engines` at `batch` holds at least: the input once, the buffers of every
    engine that keeps them between runs (onnxruntime's arena, OpenVINO's request, PyTorch's
    CUDA cache), and the largest of those that give them back (PyTorch on a CPU)."""
    per_image = live_elements_per_image(path)
    kept, freed = 0, 0
    for e in engines:
        need = per_image * ELEMENT_BYTES.get(e.arithmetic, 1)
        if e.name == "pytorch" and device != "cuda":
            freed = max(freed, need)
        else:
            kept += need
    return batch * (input_elements * 4 + kept + freed)
