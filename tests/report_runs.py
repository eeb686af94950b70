"""Run folders for the report tests, written by hand: tiny checkpoints, one-node ONNX files with
distill's metadata, bench.json and pipeline.json in the shapes distill writes them. Nothing is
trained."""

import json
import re

from distill.checkpoint import new_checkpoint, save_checkpoint
from distill.files import file_sha256
from distill.registry import build_model
from students.resnet import plan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["cat", "dog", "ship"]
JPEG_DATA = {"source": "../shared/data/cifar10-jpeg", "split_seed": 0, "val_size": 5000}

# Validation per-class top-1 and confusion counts (100 images a class, rows true) per role.
PER_CLASS = {
    "teacher": [0.95, 0.90, 0.94],
    "baseline": [0.85, 0.78, 0.88],
    "kd": [0.88, 0.80, 0.87],  # KD gain per class: +3.0, +2.0, -1.0 points
}
CONFUSION = {
    "teacher": [[95, 3, 2], [6, 90, 4], [3, 3, 94]],
    "baseline": [[85, 10, 5], [15, 78, 7], [6, 6, 88]],
    "kd": [[88, 8, 4], [13, 80, 7], [7, 6, 87]],
}
# Three cuts from 697,546 towards the 400k budget, fine-tuned between cuts.
SCHEDULE = [
    {"step": 1, "target": 575_000, "ratio": 0.1, "params": 571_000, "macs": 29_000_000,
     "val_accuracy": 0.80, "val_accuracy_finetuned": 0.835},
    {"step": 2, "target": 475_000, "ratio": 0.1, "params": 470_000, "macs": 24_000_000,
     "val_accuracy": 0.72, "val_accuracy_finetuned": 0.81},
    {"step": 3, "target": 400_000, "ratio": 0.08, "params": 398_000, "macs": 20_100_000,
     "val_accuracy": 0.61},
]  # fmt: skip


def history(epochs: int, final_acc: float) -> list[dict]:
    """Plausible curves ending at `final_acc`, best at the last epoch."""
    return [
        {
            "epoch": e,
            "lr": 0.1 * (1 - e / (epochs + 1)),
            "train_loss": 2.0 / e,
            "train_accuracy": final_acc * e / epochs - 0.02,
            "val_loss": 1.8 / e + 0.1,
            "val_accuracy": final_acc * e / epochs,
            "seconds": 10.0,
            "images_per_s": 5000.0,
        }
        for e in range(1, epochs + 1)
    ]


# The labels of the tiny network: a registry name (resnet34) would be refused as a label
# its weights do not fit.
TEACHER, STUDENT = "micro-teacher", "micro"


def tiny_model():
    # A real (tiny) model: what is under test is the report, not the architecture.
    return build_model(plan("basic", (1, 1), (8, 16), stem_width=8, num_classes=len(CLASSES)))


def tiny_counts() -> tuple[str, str]:
    """The params and MACs the report shows for every checkpoint `save` writes: counted in its
    weights and plan, whatever its record claims."""
    from distill.budget import count_macs, count_params, format_count

    model = tiny_model()
    return format_count(count_params(model)), format_count(count_macs(model, (3, 32, 32)))


def save(path, kind, arch, val, params, macs, *, data=JPEG_DATA, test=None, metrics=None, **extra):
    model = tiny_model()
    m = {"val_accuracy": val, "params": params, "macs": macs, "best_epoch": 3}
    m |= {"epochs_run": 3, "train_seconds": 95.0, "device": "cpu"}
    if test is not None:
        m["test_accuracy"] = test
    ckpt = new_checkpoint(
        kind=kind,
        arch=arch,
        model=model,
        classes=CLASSES,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        input_size=[3, 32, 32],
        recipe={"name": "quick", "epochs": 3, "batch_size": 256, "lr": 0.2, "schedule": "onecycle"},
        data=data,
        metrics=m | (metrics or {}),
        history=extra.pop("history", None) or history(3, val),
        **extra,
    )
    save_checkpoint(ckpt, path)
    return path


def save_onnx(path, source, val, params, **meta_extra):
    """A valid one-node ONNX file carrying the metadata distill's export writes."""
    import onnx
    from onnx import TensorProto, helper

    # Input [N, 3, 32, 32] -> global average pool -> [N, 3]: the shapes the metadata claims,
    # which every reader checks against the graph (three classes, three channels).
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph)
    meta = {
        "classes": json.dumps(CLASSES),
        "mean": "[0.5, 0.5, 0.5]",
        "std": "[0.25, 0.25, 0.25]",
        "arch": STUDENT,
        "params": str(params),
        "source_sha256": file_sha256(source),
        "val_accuracy": str(val),
        "input_size": "[3, 32, 32]",
        "input_layout": "NCHW",
        "input_range": "[0,1]",
        "precision": "int8" if ".int8." in str(path) else "fp32",
        "source": source.name,
    }
    helper.set_model_props(model, meta | meta_extra)
    onnx.save(model, path)


def bench_record(model: str, p50_ms: float, device: str = "cpu") -> dict:
    """The shape `distill bench --json` wrote before rows carried precision, noisy,
    val_accuracy and the environment its loadavg (export/benchmark.py `benchmark`)."""
    precision = "int8" if ".int8." in model else "fp32"
    rows = [
        {"engine": "onnxruntime", "batch_size": 1, "p50_ms": p50_ms, "p90_ms": 1.2 * p50_ms},
        {"engine": "pytorch", "batch_size": 1, "p50_ms": 3 * p50_ms, "p90_ms": 4 * p50_ms},
        {"engine": "onnxruntime", "batch_size": 32, "p50_ms": 9 * p50_ms, "p90_ms": 10 * p50_ms},
    ]
    return {
        "model": {"path": f"/runs/x/{model}", "precision": precision, "arch": STUDENT},
        "environment": {"device": device, "threads": 2, "cpu": "Test CPU"},
        "results": rows,
        "speedup": {"1": 3.0, "32": 2.0},
    }


def row(engine, precision, batch, p50, *, tail=1.3, noisy=False, acc=0.851):
    """One result row as the newer bench writes it; p99 = tail x p50."""
    return {
        "engine": engine,
        "precision": precision,
        "batch_size": batch,
        "p50_ms": p50,
        "p90_ms": 1.1 * p50,
        "p99_ms": tail * p50,
        "mean_ms": 1.05 * p50,
        "images_per_s": 1000 * batch / p50,
        "runs": 50,
        "noisy": noisy,
        "val_accuracy": acc,
    }


def new_bench_record(model: str, rows: list[dict], *, load=0.4, device="cpu", speedup=None):
    return {
        "model": {"path": f"/runs/x/{model}", "precision": "fp32", "arch": STUDENT,
                  "input_size": [3, 32, 32], "onnx_bytes": 1000, "checkpoint": None},
        "environment": {"device": device, "threads": 2, "cpu": "Test CPU",
                        "loadavg": [load, load, load]},
        "results": rows,
        "speedup": speedup or {"1": 3.0},
        "note": None,
    }  # fmt: skip


def engine_rows(p50: float, batches=(1, 32, 256)) -> list[dict]:
    """PyTorch fp32 and bf16, onnxruntime fp32, OpenVINO default, at every batch size."""
    return [
        row(engine, precision, b, p50 * scale * b**0.8, acc=acc)
        for b in batches
        for engine, precision, scale, acc in (
            ("pytorch", "fp32", 3.0, 0.851),
            ("pytorch", "bf16", 2.0, 0.850),
            ("onnxruntime", "fp32", 1.0, 0.8505),
            ("openvino", "default", 0.8, 0.849),
        )
    ]


def make_run(d, *, kd_acc=0.851, base_acc=0.838, names=None, test=None, exports=True, old=False):
    """teacher, baseline, KD student, pruned (+ fp32/int8 ONNX of the student and bench.json).
    old=True: checkpoints as distill wrote them before per-class numbers, teacher agreement and
    the pruning schedule."""
    n = {"teacher": "teacher", "baseline": "baseline", "student": "student", "pruned": "pruned"}
    n |= names or {}

    def extra(role, **more):
        if old:
            return {}
        return {"per_class": PER_CLASS[role], "confusion": CONFUSION[role]} | more

    d.mkdir(parents=True, exist_ok=True)
    teacher = save(d / f"{n['teacher']}.pt", "teacher", TEACHER, 0.931, 21_282_122,
                   1_160_000_000, metrics=extra("teacher"))  # fmt: skip
    t_rec = {"path": str(teacher), "sha256": file_sha256(teacher), "arch": TEACHER}
    t_rec["val_accuracy"] = 0.931
    # As KDConfig.to_dict() writes it: beta is there for Hinton too, though only DKD reads it.
    kd = {"method": "hinton", "alpha": 0.9, "temperature": 4.0, "beta": 8.0, "warmup_epochs": 0.0}
    save(d / f"{n['baseline']}.pt", "student", STUDENT, base_acc, 697_546, 35_500_000,
         test=test and test[0], metrics=extra("baseline"))  # fmt: skip
    student = save(d / f"{n['student']}.pt", "student", STUDENT, kd_acc, 697_546,
                   35_500_000, test=test and test[1], teachers=[t_rec], kd=kd,
                   metrics=extra("kd", teacher_agreement=0.912))  # fmt: skip
    pruning = {"source": {"path": str(student), "sha256": file_sha256(student)}}
    pruning |= {"budget": 400_000, "importance": "magnitude", "steps": 3}
    pruning |= {"params_before": 697_546, "params_after": 398_000}
    pruning |= {"macs_before": 35_500_000, "macs_after": 20_100_000}
    pruning |= {"val_accuracy_before": kd_acc, "val_accuracy_pruned": 0.61}
    pruning |= {"val_accuracy_after": 0.842}
    pruning |= {} if old else {"schedule": SCHEDULE}
    save(d / f"{n['pruned']}.pt", "pruned", f"{STUDENT}-pruned", 0.842, 398_000, 20_100_000,
         teachers=[t_rec], kd=kd, pruning=pruning,
         metrics={} if old else {"teacher_agreement": 0.884})  # fmt: skip
    if exports:
        on = {} if old else {"val_accuracy_measured_on": "this file, 5,000 val images"}
        save_onnx(d / "student.onnx", student, kd_acc if old else 0.8505, 697_546, **on)
        save_onnx(d / "student.int8.onnx", student, 0.8475, 697_546)
        first = (
            bench_record("student.onnx", 0.84)
            if old
            else new_bench_record("student.onnx", engine_rows(0.84))
        )
        bench = [first, bench_record("student.int8.onnx", 0.41)]
        bench += [bench_record("teacher.pt", 7.5), bench_record("pruned.pt", 0.05, "cuda")]
        (d / "bench.json").write_text(json.dumps(bench))
        stages = [
            {"name": "teacher", "status": "done", "seconds": 412.0, "outputs": ["teacher.pt"]},
            {"name": "student", "status": "done", "seconds": 95.5, "outputs": ["student.pt"]},
            # pipeline.json while its report stage writes this report (seconds: an older run's)
            {"name": "report", "status": "running", "seconds": 3.0, "outputs": ["report.md"]},
        ]
        config = {"preset": "quick", "student": {"budget": "5M"}, "prune_budget": 400_000}
        (d / "pipeline.json").write_text(json.dumps({"config": config, "stages": stages}))
    return d


def table_row(report: str, name: str, after: str = "") -> list[str]:
    """Cells of the first table row for `name` (after the line starting with `after`)."""
    lines = report.splitlines()
    start = next(i for i, li in enumerate(lines) if li.startswith(after)) if after else 0
    line = next(li for li in lines[start:] if li.startswith(f"| `{name}` |"))
    return [c.strip() for c in line.strip("|").split("|")]


def linked_pngs(report_path):
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report_path.read_text())
    return [report_path.parent / link for link in links]


def section(report: str, title: str) -> str:
    """The text of one `## title` section."""
    return report.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
