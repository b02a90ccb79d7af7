"""examples/dcgan.py: a 2-step smoke run of each --impl, --compare, and the bad-path errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import dcgan  # noqa: E402


@pytest.fixture(autouse=True)
def classifier_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FUSEDGAN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.parametrize("impl,arch", [("fused", "dcgan"), ("stock", "seed"), ("compile", "dcgan")])
def test_smoke_run_writes_pictures_and_log(tmp_path, impl, arch):
    out = tmp_path / "run"
    args = ["--impl", impl, "--arch", arch, "--epochs", "1", "--max-steps", "2", "--batch-size", "16",
            "--out", str(out), "--device", "cpu"]
    assert dcgan.main(args) == 0
    assert (out / "samples_epoch001.png").stat().st_size > 0
    assert (out / "loss_curve.png").stat().st_size > 0
    log = json.loads((out / "log.json").read_text())
    assert len(log["steps"]) == 2 and 0 <= log["epochs"][0]["class_coverage"] <= 1
    assert dcgan.main(args + ["--resume", "--epochs", "2"]) == 0  # continues from the checkpoint
    assert (out / "samples_epoch002.png").exists()


def test_compare_stays_within_tolerance(capsys):
    """In float64, stock and fused agree to rounding; the seed GAN's biases in front of
    BatchNorm (zero gradient by construction) are reported apart."""
    assert dcgan.main(["--compare", "3", "--batch-size", "16", "--device", "cpu", "--arch", "seed"]) == 0
    out = capsys.readouterr().out
    assert "within tolerance" in out and "float64" in out
    assert "zero gradient by construction" in out and "D.conv_blocks.2.bias" in out


def test_bad_data_paths_give_clear_errors(tmp_path, capsys):
    assert dcgan.main(["--data", f"folder:{tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert dcgan.main(["--data", f"folder:{tmp_path}"]) == 2
    assert "no .png" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an archive")
    assert dcgan.main(["--data", f"npz:{bad}"]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert dcgan.main(["--data", "imagenet"]) == 2
    assert "--data must be" in capsys.readouterr().err


def test_npz_and_folder_data(tmp_path):
    from PIL import Image

    images = (np.random.default_rng(0).random((20, 12, 12, 3)) * 255).astype(np.uint8)
    np.savez(tmp_path / "images.npz", images)
    data, labels = dcgan.load_data(f"npz:{tmp_path / 'images.npz'}", 32, 0)
    assert data.shape == (20, 3, 32, 32) and labels is None and data.min() >= -1 and data.max() <= 1
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(images[i]).save(folder / f"{i}.png")
    data, _ = dcgan.load_data(f"folder:{folder}", 32, 0)
    assert data.shape == (3, 3, 32, 32)


def test_torchrun_ddp_with_synced_batchnorm(tmp_path):
    """2 CPU processes under torchrun (gloo): DDP, fused BatchNorms with sync_batchnorm=True."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(dcgan.__file__)), "--device", "cpu", "--epochs", "1", "--max-steps", "2",
               "--batch-size", "16", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", FUSEDGAN_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "on cpu x 2 processes" in run.stdout
    assert len(json.loads((out / "log.json").read_text())["steps"]) == 2
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert any(key.endswith("running_mean") for key in state["D"])  # plain state_dict keys, no DDP prefix
