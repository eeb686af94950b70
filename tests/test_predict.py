"""`distill predict`: any image mode and size, class names from the file, clear refusals."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import EXPORT_SIZE, make_checkpoint, one_line_error, png_header_only
from PIL import Image
from typer.testing import CliRunner

from distill.api import export_onnx
from distill.checkpoint import load_checkpoint, model_from_checkpoint
from distill.cli import app
from distill.errors import UserError
from export.predict import predict, softmax
from export.wrappers import Normalized

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
CLASSES = ["cat", "dog", "ship"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random-init model exported without data on hand (parity on labelled random images)."""
    root = tmp_path_factory.mktemp("predict")
    ckpt = make_checkpoint(root / "m.pt", data={}, classes=CLASSES)
    report = export_onnx(ckpt)
    assert not report.real_images and "RANDOM" in report.parity.source
    return {"onnx": report.path, "ckpt": ckpt}


def images_of_every_kind(folder):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (EXPORT_SIZE, EXPORT_SIZE, 3), dtype=np.uint8)
    made = {
        "rgb.png": Image.fromarray(rgb),
        "grey.png": Image.fromarray(rng.integers(0, 256, (40, 25), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (7, 9, 4), dtype=np.uint8), "RGBA"),
        "palette.gif": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        "big.jpg": Image.fromarray(rng.integers(0, 256, (300, 211, 3), dtype=np.uint8)),
        "bw.bmp": Image.fromarray(rng.integers(0, 2, (33, 33), dtype=np.uint8) * 255).convert("1"),
    }
    for name, im in made.items():
        im.save(folder / name)
    return [folder / name for name in made]


def test_every_mode_and_size_gets_top_k_from_the_files_classes(model, tmp_path):
    files = images_of_every_kind(tmp_path)
    preds = predict(model["onnx"], files, top_k=2)
    assert [p.path for p in preds] == [str(f) for f in files]
    for p in preds:
        probs = [c.probability for c in p.top]
        assert len(p.top) == 2 and all(c.name == CLASSES[c.index] for c in p.top)
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert len(predict(model["onnx"], files[:1], top_k=10)[0].top) == len(CLASSES)


def test_probabilities_match_pytorch_on_the_same_pixels(model, tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (EXPORT_SIZE, EXPORT_SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    (pred,) = predict(model["onnx"], [tmp_path / "x.png"], top_k=3)
    ckpt = load_checkpoint(model["ckpt"])
    reference = Normalized(model_from_checkpoint(ckpt), ckpt["mean"], ckpt["std"])
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        want = softmax(reference(x).numpy())[0]
    got = {c.index: c.probability for c in pred.top}
    assert got == pytest.approx({i: float(want[i]) for i in got}, abs=1e-5)


def test_folders_are_searched_and_their_non_images_skipped(model, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("L", (50, 50)).save(tmp_path / "sub" / "b.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / ".hidden" / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    preds = predict(model["onnx"], [tmp_path])
    assert [p.path for p in preds] == [str(tmp_path / "a.png"), str(tmp_path / "sub" / "b.jpg")]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="holds no image"):
        predict(model["onnx"], [tmp_path / "docs"])


def test_cli_json_and_table(model, tmp_path):
    files = images_of_every_kind(tmp_path)
    result = runner.invoke(app, ["predict", str(model["onnx"]), *map(str, files[:2]), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["path"] for r in rows] == [str(f) for f in files[:2]]
    assert len(rows[0]["top_k"]) == 3
    assert set(rows[0]["top_k"][0]) == {"index", "name", "probability"}
    table = runner.invoke(app, ["predict", str(model["onnx"]), str(files[0]), "--top-k", "1"])
    assert table.exit_code == 0 and any(c in table.output for c in CLASSES)


def test_bad_inputs_exit_2_with_one_line_naming_them(model, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("this is text")
    for bad in (fake, tmp_path / "missing.jpg"):
        one_line_error(runner.invoke(app, ["predict", str(model["onnx"]), str(bad)]), bad.name)

    bare = tmp_path / "bare.onnx"
    proto = onnx.load(str(model["onnx"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    for args in ([str(bare)], [str(model["onnx"]), "--top-k", "0"]):  # (a .pt is predicted)
        result = runner.invoke(app, ["predict", *args[:1], str(tmp_path / "ok.png"), *args[1:]])
        one_line_error(result)


@pytest.mark.parametrize("side", [20_000, 10_000])  # over twice PIL's limit, and just over it
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_refused_naming_file_and_limit(model, tmp_path, side):
    from distill.data.images import MAX_PIXELS, read_image

    bomb = png_header_only(tmp_path / f"bomb{side}.png", side, side)
    with pytest.raises(UserError) as info:
        read_image(bomb, (EXPORT_SIZE, EXPORT_SIZE))
    assert str(bomb) in str(info.value) and f"{MAX_PIXELS:,}" in str(info.value)
    one_line_error(runner.invoke(app, ["predict", str(model["onnx"]), str(bomb)]), "decompression")


def test_large_images_run_in_batches_that_hold_the_pixels_of_32x32_ones(
    model, tmp_path, monkeypatch
):
    # A default batch (tuned at 32x32) of 512x512 images would be 256 times the memory: the
    # batch shrinks with the pixels instead, in every batched pass (prediction, parity,
    # accuracy, evaluation, calibration).
    from distill.memory import inference_batch
    from export.runtime import batched_logits

    assert [inference_batch(128, (3, s, s)) for s in (32, 64, 224, 512)] == [128, 32, 2, 1]
    seen = []
    images = torch.zeros(10, 3, 128, 128, dtype=torch.uint8)
    batched_logits(lambda x: seen.append(len(x)) or np.zeros((len(x), 2)), images, batch_size=64)
    assert seen == [4, 4, 2]
    # predict reads and runs the files a batch at a time: never all of them at once.
    import export.predict as predict_module

    for i in range(5):
        Image.new("RGB", (40, 40), (i, 0, 0)).save(tmp_path / f"{i}.png")
    events = []
    read, run = predict_module.read_image, predict_module.batched_logits
    assert EXPORT_SIZE <= 32  # so a batch of 2 stays 2
    monkeypatch.setattr(predict_module, "BATCH_SIZE", 2)
    monkeypatch.setattr(predict_module, "read_image", lambda f, s: events.append("r") or read(f, s))
    monkeypatch.setattr(
        predict_module, "batched_logits", lambda f, x, **k: events.append(len(x)) or run(f, x, **k)
    )
    assert len(predict(model["onnx"], [tmp_path])) == 5
    assert events == ["r", "r", 2, "r", "r", 2, "r", 1], events
    # Streaming does not mean finding a bad file late: the headers are read first.
    (tmp_path / "9.png").write_text("not an image")
    events.clear()
    with pytest.raises(UserError, match="9.png is not a readable image"):
        predict(model["onnx"], [tmp_path])
    assert events == []


def test_read_image_gives_hwc_rgb_at_the_asked_size(tmp_path):
    from distill.data.images import read_image

    Image.new("L", (40, 25), 7).save(tmp_path / "g.png")
    pixels = read_image(tmp_path / "g.png", (EXPORT_SIZE, EXPORT_SIZE + 2))
    assert pixels.shape == (EXPORT_SIZE, EXPORT_SIZE + 2, 3) and pixels.dtype == np.uint8
    assert (pixels == 7).all()


def test_unknown_engine_or_device_is_refused(model, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(UserError, match="unknown engine"):
        predict(model["onnx"], [tmp_path / "a.png"], engine="tensorrt")
    with pytest.raises(UserError, match="checkpoints"):
        predict(model["onnx"], [tmp_path / "a.png"], engine="pytorch")
    with pytest.raises(UserError, match="auto, cpu or cuda"):
        predict(model["onnx"], [tmp_path / "a.png"], device="tpu")
    (auto,) = predict(model["onnx"], [tmp_path / "a.png"], engine="ort", device="auto")
    assert len(auto.top) == 3


def test_openvino_predicts_what_onnxruntime_does(model, tmp_path):
    pytest.importorskip("openvino")
    files = images_of_every_kind(tmp_path)
    ort_preds = predict(model["onnx"], files, top_k=3)
    ov_preds = predict(model["onnx"], files, top_k=3, engine="openvino")
    for a, b in zip(ort_preds, ov_preds, strict=True):
        assert a.path == b.path
        # OpenVINO's default precision may be bf16 (3 significant digits): compare loosely.
        got = {c.index: c.probability for c in b.top}
        want = {c.index: c.probability for c in a.top}
        assert got.keys() == want.keys() or a.top[0].probability - a.top[1].probability < 0.02
        assert b.top[0].probability == pytest.approx(a.top[0].probability, abs=0.02)


def fixed_batch_copy(path, out, batch: int = 1):
    """The exported file with its batch axis fixed, as an export without dynamic axes writes."""
    graph = onnx.load(str(path))
    for value in (*graph.graph.input, *graph.graph.output):
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(graph, str(out))
    return out


def test_a_fixed_batch_model_runs_one_batch_at_a_time_and_bench_names_the_limit(model, tmp_path):
    from export.engines import onnxruntime_engine

    fixed = fixed_batch_copy(model["onnx"], tmp_path / "fixed.onnx")
    files = images_of_every_kind(tmp_path)
    ours = [p.top for p in predict(fixed, files)]
    assert ours == [p.top for p in predict(model["onnx"], files)]
    engine = onnxruntime_engine(fixed, "fp32")
    with pytest.raises(UserError, match="fixed batch of 1 .* --batch-sizes 1"):
        engine.prepare(np.zeros((2, 3, EXPORT_SIZE, EXPORT_SIZE), dtype=np.float32))


def test_openvino_runs_a_fixed_batch_model_one_batch_at_a_time(model, tmp_path):
    try:
        import openvino  # noqa: F401
    except ImportError:
        pytest.skip("OpenVINO is not installed (pip install 'distill[openvino]')")
    from export.engines import openvino_engine

    fixed = fixed_batch_copy(model["onnx"], tmp_path / "fixed.onnx")
    files = images_of_every_kind(tmp_path)
    ours = predict(fixed, files, top_k=1, engine="openvino")
    dynamic = predict(model["onnx"], files, top_k=1, engine="openvino")
    assert [p.top[0].index for p in ours] == [p.top[0].index for p in dynamic]
    engine = openvino_engine(fixed, "fp32", threads=1, f32=True)
    assert engine.run(np.zeros((3, 3, EXPORT_SIZE, EXPORT_SIZE), dtype=np.float32)).shape == (
        3,
        len(CLASSES),
    )
    engine.prepare(np.zeros((1, 3, EXPORT_SIZE, EXPORT_SIZE), dtype=np.float32))()
    with pytest.raises(UserError, match="fixed batch of 1 .* --batch-sizes 1"):
        engine.prepare(np.zeros((2, 3, EXPORT_SIZE, EXPORT_SIZE), dtype=np.float32))
