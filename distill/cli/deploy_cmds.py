"""`distill predict` and `bench` (`distill export onnx` is export_cmd.py's sub-app)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import typer

from distill.cli.common import (
    command,
    console,
)
from distill.console import styled
from distill.flags import Flags, Group, with_settings
from distill.settings import BenchSettings


@command(
    name="predict",
    epilog="Examples:\n\n  distill predict runs/s.onnx cat.jpg dog.png\n\n"
    "  distill predict runs/s.int8.onnx photos/ --top-k 5 --json > predictions.json\n\n"
    "  distill predict runs/s.onnx photos/ --engine openvino\n\n"
    "  distill predict runs/s.pt cat.jpg   (a checkpoint, run by PyTorch)",
)
def predict_cmd(
    model: Path = typer.Argument(
        ..., help="An .onnx file written by distill export, or a checkpoint .pt (run by PyTorch)."
    ),
    images: list[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    top_k: int = typer.Option(3, "--top-k", help="Classes to show per image.", min=1),
    engine: Literal["onnxruntime", "ort", "openvino"] = typer.Option(
        "onnxruntime", help="onnxruntime (ort) or openvino (pip install 'distill\\[openvino]')."
    ),
    device: Literal["auto", "cpu", "cuda"] = typer.Option(
        "cpu",
        help="auto, cpu or cuda. The CPU unless told otherwise, since for a handful of images "
        "a GPU session takes longer to start than the work.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Classify images of any size and mode; class names and input size come from the file.
    Images are resized on their shorter side and centre-cropped to the model's input, as in
    training."""
    from distill.cli.show import show_predictions
    from export.predict import predict

    show_predictions(predict(model, images, top_k, engine=engine, device=device), as_json)


@command(
    name="bench",
    epilog="Examples:\n\n  distill bench runs/s.onnx\n\n"
    "  distill bench runs/s.pt --batch-sizes 1,32,256 --threads 4 -o bench.json\n\n"
    "  distill bench runs/s.onnx --engines pytorch,onnxruntime,openvino --json\n\n"
    "  distill bench runs/s.onnx --device cuda",
)
@with_settings(bench=Group(BenchSettings))
def bench_cmd(
    flags: Flags,
    model: Path = typer.Argument(..., help="An exported .onnx or a checkpoint .pt."),
    checkpoint: Path = typer.Option(
        None, help="PyTorch baseline for an .onnx whose checkpoint is not beside it."
    ),
    int8: Path = typer.Option(None, "--int8", help="An int8 file that is not MODEL's sibling."),
    data: str = typer.Option(None, "--data", help="The model's data, when not where recorded."),
    data_root: Path = typer.Option(None, help="Where cifar10/cifar100 were downloaded."),
    cache_dir: Path = typer.Option(None, help="Decoded-data cache directory."),
    out: Path = typer.Option(None, "-o", "--out", help="Also write the full record here (.json)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Latency p50/p90/p99, images/s, accuracy and GFLOP/s of every engine and precision
    (PyTorch, onnxruntime, OpenVINO), measured in one run in alternating blocks."""
    from distill.api import bench
    from distill.cli.show import show_bench
    from export.record import check_bench_output, write_bench_record

    settings = flags.build("bench")
    if out is not None:
        check_bench_output(out, force)
    with console.status("benchmarking") as status:
        record = bench(
            model,
            settings,
            checkpoint=checkpoint,
            int8=int8,
            data=data,
            data_root=data_root,
            cache_dir=cache_dir,
            progress=lambda msg: status.update(f"benchmarking: {msg}"),
        )
    if as_json:
        typer.echo(json.dumps(record, indent=2))
    else:
        show_bench(record)
    if out is not None:
        write_bench_record(record, out, force)
        console.print(styled("wrote", "green"), str(out))
