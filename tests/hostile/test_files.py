"""Promise: "no pickled code" and "a save cannot lose what was there before".

Attacks: a pickle that runs code, an index that points outside its checkpoint, a header
that relabels a tensor's dtype, cut-short and corrupt files, symbolic links, the current
folder, a save killed mid-write, an output folder inside its own source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import prunekit as pk
from prunekit.cli.sources import load_model

from ..zoo import resnet_basic

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": RunsCode(marker)}, tmp_path / "weights.pt")
    with pytest.raises(pk.ConfigError, match="--trust-pickle"):
        load_model(f"ultralytics:{tmp_path / 'weights.pt'}")
    assert not marker.exists()


def test_an_ultralytics_checkpoint_loads_without_unpickling_code(tmp_path):
    ultralytics = pytest.importorskip("ultralytics")
    yolo = ultralytics.YOLO("yolov8n.yaml")
    torch.save({"model": yolo.model}, tmp_path / "yolo.pt")
    network = load_model(f"ultralytics:{tmp_path / 'yolo.pt'}")
    assert sum(p.numel() for p in network.parameters()) == sum(
        p.numel() for p in yolo.model.parameters())


@pytest.fixture
def saved(tmp_path):
    model = resnet_basic().eval()
    result = pk.prune(model, X, pk.FilterPruning(0.5))
    pk.save(model, tmp_path / "ckpt", result.plan)
    return tmp_path / "ckpt", model


def _shard(folder, outside_name):
    """Turn the checkpoint into an index naming ``outside_name`` for every tensor."""
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {name: outside_name for name in tensors}}))
    return tensors


@pytest.mark.parametrize("name", ["../outside.safetensors", "/tmp/outside.safetensors",
                                  "sub/../../outside.safetensors"])
def test_an_index_cannot_name_a_file_outside_its_checkpoint(saved, name):
    folder, _ = saved
    tensors = _shard(folder, name)
    save_file(tensors, str(folder.parent / "outside.safetensors"))
    with pytest.raises(pk.PlanError, match="not a file name inside its folder"):
        pk.load(resnet_basic(), folder)


def test_a_symbolic_link_out_of_the_checkpoint_is_refused(saved):
    folder, _ = saved
    tensors = _shard(folder, "linked.safetensors")
    save_file(tensors, str(folder.parent / "outside.safetensors"))
    (folder / "linked.safetensors").symlink_to(folder.parent / "outside.safetensors")
    with pytest.raises(pk.PlanError, match="leads outside its folder"):
        pk.load(resnet_basic(), folder)


def _relabel(path, key, dtype):
    """Rewrite one tensor's dtype in a safetensors header, leaving the bytes alone."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    header[key]["dtype"] = dtype
    text = json.dumps(header, separators=(",", ":")).encode().ljust(size)
    assert len(text) == size
    path.write_bytes(raw[:8] + text + raw[8 + size:])


def test_a_header_that_relabels_a_dtype_is_refused(saved):
    folder, _ = saved
    _relabel(folder / "model.safetensors", "3.bias", "I32")  # same bytes, other numbers
    fresh = resnet_basic()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(pk.PlanError, match="stored as int32, the model's is float32"):
        pk.load(fresh, folder)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_cut_short_or_corrupt_weights_file_is_one_line(saved, damage):
    folder, _ = saved
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": b"\xff" * 64,
                      "empty": b""}[damage])
    with pytest.raises(pk.PlanError, match="not a readable safetensors file"):
        pk.load(resnet_basic(), folder)


@pytest.mark.parametrize("content", ["[]", '"plan"', "null", "{", "\xff\xfe",
                                     "[" * 100000 + "]" * 100000])
def test_a_plan_file_that_is_not_a_plan_is_one_line(saved, content):
    folder, _ = saved
    (folder / "plan.json").write_bytes(content.encode("latin-1") if content == "\xff\xfe"
                                       else content.encode())
    with pytest.raises(pk.PlanError):
        pk.load(resnet_basic(), folder)


def test_saving_through_a_symbolic_link_keeps_the_link(saved, tmp_path):
    folder, model = saved
    link = tmp_path / "latest"
    link.symlink_to(folder)
    result = pk.prune(resnet_basic().eval(), X, pk.FilterPruning(0.25))
    pk.save(pk.load(resnet_basic(), folder), link, pk.Plan.load(folder / "plan.json"))
    assert link.is_symlink() and (folder / "plan.json").is_file()
    del result


def test_saving_to_a_dangling_link_writes_where_it_points(tmp_path):
    model = resnet_basic().eval()
    result = pk.prune(model, X, pk.FilterPruning(0.5))
    link = tmp_path / "latest"
    link.symlink_to(tmp_path / "target")
    pk.save(model, link, result.plan)
    assert link.is_symlink() and (tmp_path / "target" / "plan.json").is_file()


def test_saving_to_the_current_folder_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    model = resnet_basic().eval()
    result = pk.prune(model, X, pk.FilterPruning(0.5))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pk.PlanError, match="current folder"):
        pk.save(model, ".", result.plan)
    assert list(tmp_path.iterdir()) == []


def test_a_save_killed_mid_write_is_cleaned_up_by_the_next(tmp_path):
    """A child process is killed while it writes; the next save removes its staging."""
    script = textwrap.dedent(f"""
        import os, torch, prunekit as pk
        from prunekit.export import saving as io
        from tests.zoo import resnet_basic
        model = resnet_basic().eval()
        result = pk.prune(model, torch.randn(2, 3, 16, 16), pk.FilterPruning(0.5))
        def die(folder):
            io.write_checkpoint(model, folder, result.plan)
            os._exit(9)  # killed: no finally runs
        io.replace_folder(io.Path({str(tmp_path / 'ckpt')!r}), die)
    """)
    subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), check=False)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.")]
    assert leftovers  # the killed save left its staging folder
    model = resnet_basic().eval()
    result = pk.prune(model, X, pk.FilterPruning(0.5))
    pk.save(model, tmp_path / "ckpt", result.plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_save_is_readable_by_others_as_the_umask_allows(tmp_path):
    model = resnet_basic().eval()
    result = pk.prune(model, X, pk.FilterPruning(0.5))
    old = os.umask(0o022)
    try:
        pk.save(model, tmp_path / "ckpt", result.plan)
    finally:
        os.umask(old)
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o755


def test_an_index_that_is_not_a_table_is_one_line(saved):
    folder, _ = saved
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ["a"]}')
    with pytest.raises(pk.PlanError, match="not a safetensors index"):
        pk.load(nn.Linear(2, 2), folder)


def test_a_pickle_that_calls_a_loader_class_of_ultralytics_is_refused(tmp_path):
    autobackend = pytest.importorskip("ultralytics.nn.autobackend")

    class CallsLoader:
        def __reduce__(self):  # AutoBackend(weights) would unpickle the file it names
            return (autobackend.AutoBackend, (str(tmp_path / "other.pt"),))

    torch.save({"model": CallsLoader()}, tmp_path / "weights.pt")
    with pytest.raises(pk.ConfigError, match="AutoBackend"):
        load_model(f"ultralytics:{tmp_path / 'weights.pt'}")
