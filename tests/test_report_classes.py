"""Report per-class section: accuracy per class and confusion heatmaps of the teacher, baseline
and KD student, the KD gain per class; older checkpoints without these numbers are named, not
fatal."""

import pytest
from matplotlib.figure import Figure
from report_runs import CLASSES, PNG_SIGNATURE, STUDENT, linked_pngs, make_run, save, section

from distill.report import collect_models, write_report
from distill.report.class_plots import draw_confusion
from distill.report.classes import collect_scores, gains


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = make_run(tmp_path_factory.mktemp("classes") / "run", exports=False)
    return d, write_report(d)


def test_per_class_table_and_kd_gain_numbers(run):
    _, path = run
    text = section(path.read_text(), "Per-class accuracy")
    head = "| class | `teacher.pt` | `baseline.pt` | `student.pt` | KD gain `student.pt` (points) |"
    assert head in text
    assert "| cat | 95.0% | 85.0% | 88.0% | +3.0 |" in text
    assert "| dog | 90.0% | 78.0% | 80.0% | +2.0 |" in text
    assert "| ship | 94.0% | 88.0% | 87.0% | -1.0 |" in text
    assert (
        "Per class, `student.pt` vs `baseline.pt`: better on 2 of 3 classes, "
        "from -1.0 points (ship) to +3.0 (cat)."
    ) in text
    assert "pruned.pt" not in text  # teacher, baseline and KD student only


def test_heatmaps_and_gain_plot_are_linked_pngs(run):
    d, path = run
    names = [p.name for p in linked_pngs(path)]
    expected = ["per_class_accuracy.png", "kd_gain_per_class.png"]
    expected += [f"confusion_{m}.png" for m in ("teacher", "baseline", "student")]
    assert [n for n in names if n in expected] == expected  # pictures in reading order
    for name in expected:
        data = (d / "plots" / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5_000


def test_confusion_heatmap_is_row_normalised_with_class_names(run):
    d, _ = run
    scores, notes = collect_scores(collect_models(d).models)
    assert notes == [] and [s.model.name for s in scores] == [
        "teacher.pt",
        "baseline.pt",
        "student.pt",
    ]
    fig = Figure()
    draw_confusion(fig, scores[2])
    ax = fig.axes[0]
    image = ax.get_images()[0].get_array()
    assert image[1].tolist() == pytest.approx([13, 80, 7])  # % of true dogs predicted as each
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert "80" in [t.get_text() for t in ax.texts]
    ((kd, base, gain),) = gains(scores)
    assert (kd.model.name, base.model.name) == ("student.pt", "baseline.pt")
    assert [round(g, 1) for g in gain] == [3.0, 2.0, -1.0]


def test_older_checkpoints_are_named_in_missing_not_fatal(tmp_path):
    d = make_run(tmp_path / "old", exports=False, old=True)
    # one newer checkpoint keeps per-class accuracy but no confusion matrix
    save(d / "baseline.pt", "student", STUDENT, 0.838, 697_546, 35_500_000,
         metrics={"per_class": [0.85, 0.78, 0.88]})  # fmt: skip
    report = write_report(d).read_text()
    missing = section(report, "Missing or skipped")
    for name in ("teacher.pt", "student.pt"):
        assert f"`{name}` records no per-class accuracy or confusion matrix" in missing
    assert "`baseline.pt` records no confusion matrix: no heatmap for it." in missing
    assert "`pruned.pt`'s pruning record has no per-step schedule" in missing
    # what there is is still shown: baseline's classes, no gain (its KD student has none)
    text = section(report, "Per-class accuracy")
    assert "| cat | 85.0% |" in text and "KD gain" not in text
    names = {p.name for p in linked_pngs(d / "report.md")}
    assert "per_class_accuracy.png" in names
    assert not names & {"kd_gain_per_class.png", "confusion_baseline.png"}
    assert not (d / "plots" / "confusion_teacher.png").exists()
