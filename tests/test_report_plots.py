"""Report plots drawn on a Figure and inspected: a pruned model's trajectory runs from its source
through every cut to the final model."""

from pathlib import Path

from matplotlib.figure import Figure
from report_runs import SCHEDULE

from distill.report.models import Model
from distill.report.pruning import Waypoint, draw_trajectory, steps_table, trajectory


def model(role="kd", **ckpt) -> Model:
    return Model(Path("m.pt"), role, "resnet18-quarter", 697_546, 35_500_000, 0.842, None, 1,
                 ckpt={"metrics": {"best_epoch": 10}} | ckpt)  # fmt: skip


def pruned(**record) -> Model:
    base = {"params_before": 697_546, "params_after": 398_000, "budget": 400_000}
    base |= {"val_accuracy_before": 0.851, "val_accuracy_pruned": 0.61}
    base |= {"val_accuracy_after": 0.842}
    return model("pruned", pruning=base | record)


def test_pruning_trajectory_runs_through_every_cut_and_fine_tune():
    path, note = trajectory(pruned(schedule=SCHEDULE))
    assert note is None
    assert path == [
        Waypoint(697_546, 0.851, "source"),
        Waypoint(571_000, 0.80, "cut"),
        Waypoint(571_000, 0.835, "fine-tuned"),
        Waypoint(470_000, 0.72, "cut"),
        Waypoint(470_000, 0.81, "fine-tuned"),
        Waypoint(398_000, 0.61, "cut"),
        Waypoint(398_000, 0.842, "final"),
    ]
    fig = Figure()
    ax = fig.subplots()
    draw_trajectory(ax, path, 400_000)
    assert ax.get_xscale() == "log"
    line = ax.get_lines()[0]  # the path, in order
    assert line.get_xdata().tolist() == [w.params for w in path]
    assert line.get_ydata().tolist() == [100 * w.accuracy for w in path]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["source", "right after a cut", "after fine-tuning between cuts",
                      "final (after recovery)", "budget"]  # fmt: skip
    table = steps_table(pruned(schedule=SCHEDULE))
    assert "| 2 | 475.00k | 470.00k | 24.00M | 72.0% | 81.0% |" in table


def test_pruning_record_without_schedule_still_draws_a_path():
    path, note = trajectory(pruned())
    assert [w.event for w in path] == ["source", "cut", "final"]
    assert "no per-step schedule" in note
    assert steps_table(pruned()) == []
    assert trajectory(model()) == ([], None)  # not a pruned model
