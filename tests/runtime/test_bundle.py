from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runtime.bundle import FORMAT_VERSION, load_bundle
from runtime.bundle_write import staged_bundle_dir
from runtime.errors import MobileVLAError


@pytest.fixture
def bundle_copy(demo_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(demo_bundle, target)
    return target


def test_demo_bundle_loads_and_describes_itself(demo_bundle: Path) -> None:
    manifest = load_bundle(demo_bundle).manifest
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.prompt.layout == "robovlms"
    assert manifest.policy.head_variant == "velocities"
    assert (manifest.policy.chunk, manifest.policy.window, manifest.policy.action_dim) == (10, 8, 2)
    assert manifest.parts["vision"].spec.inputs[0].shape == (1, 224, 224, 4)
    assert manifest.parts["head"].spec.outputs[0].shape == (1, 10, 2)
    assert set(manifest.files) >= {"vision.onnx", "trunk.onnx", "head.onnx", "tokenizer.json", "build_report.json"}
    assert all(len(digest) == 64 for digest in manifest.files.values())
    assert manifest.source["checkpoint_sha256"] is None  # demo: no checkpoint file on disk
    assert manifest.source["lora_layers_merged"] > 0


def test_missing_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "trunk.onnx").unlink()
    with pytest.raises(MobileVLAError, match=r"incomplete: trunk.onnx is missing.*rebuild"):
        load_bundle(bundle_copy)


def test_wrong_hash_is_refused(bundle_copy: Path) -> None:
    with (bundle_copy / "head.onnx").open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(MobileVLAError, match=r"head.onnx has sha256 .* the manifest says .*copy the bundle again"):
        load_bundle(bundle_copy)
    load_bundle(bundle_copy, verify_hashes=False)  # explicitly skipped check


def test_unknown_format_version_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(MobileVLAError, match=r"format version 99; this runtime reads version 1"):
        load_bundle(bundle_copy)


def test_missing_manifest_and_directory(tmp_path: Path) -> None:
    with pytest.raises(MobileVLAError, match=r"does not exist; build one with `build_engines`"):
        load_bundle(tmp_path / "nowhere")
    with pytest.raises(MobileVLAError, match=r"has no manifest.json: it is not a bundle"):
        load_bundle(tmp_path)


def test_malformed_manifest_entry(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    del data["policy"]["window_size"]
    path.write_text(json.dumps(data))
    with pytest.raises(MobileVLAError, match=r"missing or has a malformed entry \(KeyError: 'window_size'\)"):
        load_bundle(bundle_copy)


def test_staged_write_is_atomic(tmp_path: Path) -> None:
    final = tmp_path / "bundle"
    final.mkdir()
    (final / "manifest.json").write_text("{}")
    (final / "old.txt").write_text("old")
    with pytest.raises(ValueError), staged_bundle_dir(final) as stage:
        (stage / "half.onnx").write_text("partial")
        raise ValueError("build failed half-way")
    assert sorted(p.name for p in final.iterdir()) == ["manifest.json", "old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging leftovers
    with staged_bundle_dir(final) as stage:
        (stage / "new.txt").write_text("new")
        (stage / "manifest.json").write_text("{}")
    assert sorted(p.name for p in final.iterdir()) == ["manifest.json", "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
