"""A pruned Ultralytics YOLO model is still an Ultralytics model: it predicts, validates,
trains (through ``pruned_trainer``), exports to ONNX, and saves and reloads both as an
Ultralytics checkpoint and with ``pk.save``/``pk.load``. Random weights; the dataset is a
few synthetic images written by the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prunekit as pk

ultralytics = pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402

from prunekit.adapters.ultralytics import pruned_trainer  # noqa: E402

SIZE = 64
QUIET = {"verbose": False, "plots": False, "device": "cpu", "workers": 0}


def _dataset(root) -> str:
    """Eight 64 px images, each with one bright box, labelled in YOLO format."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(4):
            image = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
            x, y, w, h = rng.integers(8, 24, 4)
            image[y:y + h, x:x + w] = 230
            Image.fromarray(image).save(root / "images" / split / f"{i}.jpg")
            cx, cy = (x + w / 2) / SIZE, (y + h / 2) / SIZE
            (root / "labels" / split / f"{i}.txt").write_text(
                f"0 {cx:.4f} {cy:.4f} {w / SIZE:.4f} {h / SIZE:.4f}\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n")
    return str(data)


def _pruned_yolo():
    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml", verbose=False)
    before = sum(p.numel() for p in yolo.model.parameters())
    result = pk.prune(yolo.model, torch.randn(1, 3, SIZE, SIZE), pk.FilterPruning(0.5, "l1"))
    assert result.report.ok and result.skipped == []
    return yolo, result, before


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_a_pruned_yolo_predicts_validates_trains_exports_and_reloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # export writes yolov8n.onnx into the working directory
    yolo, result, before = _pruned_yolo()
    pruned = _count(yolo.model)
    assert pruned < 0.5 * before

    # predict and val use the pruned network as it is
    image = np.full((SIZE, SIZE, 3), 90, dtype=np.uint8)
    predictions = yolo.predict(image, imgsz=SIZE, **QUIET)
    assert len(predictions) == 1 and predictions[0].boxes is not None
    data = _dataset(tmp_path / "data")
    metrics = yolo.val(data=data, imgsz=SIZE, batch=2, project=str(tmp_path / "runs"), **QUIET)
    assert 0.0 <= metrics.box.map50 <= 1.0

    # ONNX: exported from the pruned network, and it computes what the network computes
    onnx_path = yolo.export(format="onnx", imgsz=SIZE, simplify=False, dynamic=False)
    import onnxruntime

    x = torch.rand(1, 3, SIZE, SIZE)
    yolo.model.eval()
    with torch.no_grad():
        expected = yolo.model(x)[0].numpy()
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-3 * np.abs(expected).max()

    # pk.save / pk.load: the plan replayed onto a fresh build of the YAML
    pk.save(yolo.model, tmp_path / "pk", result.plan)
    fresh = YOLO("yolov8n.yaml", verbose=False)
    pk.load(fresh.model, tmp_path / "pk")
    fresh.model.eval()
    with torch.no_grad():
        assert torch.allclose(fresh.model(x)[0], yolo.model(x)[0], atol=1e-5)

    # train: the pruned network trains as it is (Ultralytics alone would rebuild the YAML's)
    yolo.train(data=data, epochs=1, imgsz=SIZE, batch=2, amp=False, val=False,
               project=str(tmp_path / "runs"), name="train", exist_ok=True,
               trainer=pruned_trainer(yolo), **QUIET)
    assert _count(yolo.model) == pruned  # after train, yolo.model is the reloaded checkpoint

    # the Ultralytics checkpoint: saved and loaded as a pruned model
    yolo.save(tmp_path / "pruned.pt")
    reloaded = YOLO(str(tmp_path / "pruned.pt"), verbose=False)
    assert _count(reloaded.model) == pruned
    assert len(reloaded.predict(image, imgsz=SIZE, **QUIET)) == 1


def test_without_the_pruned_trainer_ultralytics_would_train_the_unpruned_yaml():
    """Why ``pruned_trainer`` exists: the task's own trainer builds the YAML's network."""
    from ultralytics.nn.tasks import DetectionModel

    yolo, _, before = _pruned_yolo()
    assert _count(DetectionModel(yolo.model.yaml, verbose=False)) == before  # what train builds
    assert pruned_trainer(yolo).get_model(None, cfg=yolo.model.yaml) is yolo.model


def test_pruned_trainer_names_what_it_needs():
    with pytest.raises(pk.ConfigError, match="pruned_trainer takes an Ultralytics model"):
        pruned_trainer(torch.nn.Linear(2, 2))
