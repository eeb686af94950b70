"""Report plots drawn on a Figure and inspected: a loss spike keeps the loss axis readable, and
a pruned model's trajectory runs from its source through every cut to the final model."""

from pathlib import Path

from matplotlib.figure import Figure
from report_runs import SCHEDULE, history

from distill.report.curves import draw_curves, loss_ceiling
from distill.report.pruning import Waypoint, draw_trajectory, steps_table, trajectory
from distill.report.records import Model


def model(role="kd", **ckpt) -> Model:
    return Model(Path("m.pt"), role, "resnet18-quarter", 697_546, 35_500_000, 0.842, None, 1,
                 ckpt={"metrics": {"best_epoch": 10}} | ckpt)  # fmt: skip


def test_a_loss_spike_keeps_the_loss_axis_bounded_and_is_marked():
    spiked = history(10, 0.85)
    spiked[4]["train_loss"] = 1e6  # one diverged epoch
    fig = Figure()
    assert draw_curves(fig, model(history=spiked))
    loss_ax = fig.axes[0]
    low, top = loss_ax.get_ylim()
    assert 2.0 <= top < 10  # every ordinary value (largest 2.0) shows; the spike does not rule
    assert low < 0.3  # smallest ordinary value (train loss 0.2 at epoch 10) shows
    edge = [li for li in loss_ax.get_lines() if li.get_marker() == "^"]
    assert [tuple(li.get_xydata()[0]) for li in edge] == [(5.0, top)]  # drawn on the top edge
    assert "train 1e+06" in [t.get_text() for t in loss_ax.texts]  # with its true value


def test_ordinary_curves_are_not_clipped():
    fig = Figure()
    assert draw_curves(fig, model(history=history(10, 0.85)))
    assert fig.axes[0].get_ylim()[1] >= 2.0
    assert not [li for li in fig.axes[0].get_lines() if li.get_marker() == "^"]
    steep = [2.3 * 0.93**e for e in range(200)]  # long decay over decades: no outlier
    assert loss_ceiling(steep + [v + 0.1 for v in steep]) is None
    assert loss_ceiling([2.0, 1.0, 0.67, 1.9, 1.0, 0.7]) is None


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
