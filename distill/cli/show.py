"""How `distill predict` and `distill bench` print their results: tables for a terminal, JSON
for a program."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from distill.console import make_console

console = make_console()


def show_predictions(predictions: list, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([p.to_dict() for p in predictions], indent=2))
        return
    table = Table()
    table.add_column("image", overflow="fold")  # whole paths: they are what the user passed
    k = max((len(p.top) for p in predictions), default=0)
    for i in range(k):
        table.add_column(f"#{i + 1}")
    for p in predictions:
        table.add_row(str(p.path), *(f"{c.name} {c.probability:.1%}" for c in p.top))
    console.print(table)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def show_bench(record: dict) -> None:
    """The bench record as a table, noisy rows flagged, then the summary and notes."""
    env = record["environment"]
    table = Table(
        title=f"{record['model']['path']} ({record['model']['precision']}) on "
        f"{env['device']}, {env['threads']} threads, {env['cpu']}"
    )
    columns = ("batch", "engine", "p50 ms", "p90 ms", "p99 ms", "images/s", "GFLOP/s", "val top-1")
    for col in (*columns, "runs", ""):
        table.add_column(col, justify="left" if col in ("engine", "") else "right")
    for r in record["results"]:
        peak = f" / {r['peak_gflops']:,.0f}" if r.get("peak_gflops") else ""
        gflops = f"{r['gflops']:,.1f}{peak}" if r.get("gflops") is not None else "-"
        shown = f"default ({r['arithmetic']})" if r["precision"] == "default" else r["precision"]
        table.add_row(
            str(r["batch_size"]),
            f"{r['engine']} {shown}",
            f"{r['p50_ms']:.2f}",
            f"{r['p90_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['images_per_s']:,.0f}",
            gflops,
            _pct(r.get("val_accuracy")),
            str(r["runs"]),
            f"NOISY ({r['noisy_why']})" if r.get("noisy") else "",
            style="yellow" if r.get("noisy") else None,
        )
    console.print(table)
    peaks = ", ".join(f"{k} {v:,.0f}" for k, v in (env.get("peak_gflops") or {}).items())
    if peaks:
        console.print(f"GFLOP/s: achieved / this machine's matmul peak at its precision ({peaks})")
    over = [r for r in record["results"] if r.get("peak_gflops") and r["gflops"] > r["peak_gflops"]]
    if over:
        # The achieved rate counts a direct convolution's multiply-adds; an engine that computes
        # fewer (Winograd, fused int8 paths) or a probe that ran before the cores clocked up
        # shows a rate above the probe's. Not a faster-than-hardware result.
        console.print(
            f"{len(over)} row{'s' * (len(over) != 1)} above the peak: the rate counts a direct "
            "convolution's multiply-adds, and an engine may compute fewer (Winograd) than that; "
            "the matmul probe is a lower bound of the peak, not a ceiling"
        )
    timing = record.get("timing") or {}
    if timing.get("onnxruntime_spinning"):
        console.print(f"onnxruntime intra-op spinning {timing['onnxruntime_spinning']}")
    for bs, ratio in record["speedup"].items():
        console.print(f"batch {bs}: onnxruntime fp32 {ratio:.2f}x PyTorch eager fp32 (p50 latency)")
    summary = record.get("summary") or {}
    if summary.get("by_batch_size"):
        console.print(f"{summary['basis']}:", style="bold")
        for bs, best in summary["by_batch_size"].items():
            ratio = best.get("speedup_vs_pytorch_fp32")
            vs = f", {ratio:.2f}x PyTorch eager fp32" if ratio else ""
            flag = " (noisy: not a firm result)" if best["noisy"] else ""
            console.print(
                f"  batch {bs}: {best['engine']} {best['precision']}, p50 {best['p50_ms']:.2f} ms, "
                f"val top-1 {_pct(best['val_accuracy'])}{vs}{flag}"
            )
    if any(r.get("noisy") for r in record["results"]):
        console.print(
            "rows marked NOISY ran while the machine was busy or had a long tail; "
            "rerun on a quiet machine before quoting them",
            style="yellow",
        )
    if record.get("note"):
        # Plain text (the console has no markup): "pip install 'distill[openvino]'" stays whole.
        console.print(str(record["note"]), style="yellow")
