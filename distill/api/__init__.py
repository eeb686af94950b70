"""distill from Python: the commands as functions, with plain strings and paths in and checkpoint
or result dicts out.

Each function builds the same settings objects and calls the same library function as its
command (distill/cli/), so a default lives in one place (distill/settings.py, the named
recipes) and a mistake is the same `distill.errors.UserError` with the same one-line message.
Keyword overrides are settings fields by name: `epochs=2, batch_size=64` (the recipe),
`val_size=1000, train_size=4000, cache_dir=...` (the data), `device="cpu", seed=1, force=True`
(the run). Unknown names are a UserError listing the valid ones.

    import distill

    distill.train_teacher("resnet18-quarter", "cifar10", "runs/t.pt", recipe="quick")
    student = distill.train_student("runs/t.pt", "resnet18-quarter", out="runs/s.pt")
    model = distill.load_model("runs/s.pt")  # [0,1] RGB NCHW in, logits out
"""

from distill.api.deploy import bench, evaluate, export_onnx, load_model
from distill.api.pruning import prune
from distill.api.training import check_launch, import_teacher, train_student, train_teacher

__all__ = [
    "bench",
    "check_launch",
    "evaluate",
    "export_onnx",
    "import_teacher",
    "load_model",
    "prune",
    "train_student",
    "train_teacher",
]
