"""Backend choice: "auto", FUSEDGAN_BACKEND, errors for unusable backends, python -m fusedgan."""

import subprocess
import sys

import pytest
import torch

import fusedgan
from fusedgan import _backends
from fusedgan._backends import BackendUnavailableError, resolve_backend


def test_available_backends_lists_what_runs():
    available = fusedgan.available_backends()
    assert "torch" in available
    for name, why in fusedgan.backend_status().items():
        assert (why is None) == (name in available)
        assert why is None or len(why) > 20  # a reason a person can act on


def test_auto_never_picks_triton_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) in ("cpu", "torch")


def test_env_var_overrides_auto(monkeypatch):
    monkeypatch.setenv("FUSEDGAN_BACKEND", "torch")
    _backends.clear_resolution_cache()  # the variable is read when a backend is first resolved
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    monkeypatch.setenv("FUSEDGAN_BACKEND", "triton")
    monkeypatch.setattr(_backends, "_triton_interpreted", lambda: False)
    _backends.clear_resolution_cache()
    with pytest.raises(BackendUnavailableError, match="from FUSEDGAN_BACKEND"):
        resolve_backend("auto", torch.device("cpu"))
    monkeypatch.setenv("FUSEDGAN_BACKEND", "nonsense")
    _backends.clear_resolution_cache()
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("auto", torch.device("cpu"))
    _backends.clear_resolution_cache()


def test_named_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.setattr(_backends, "_triton_interpreted", lambda: False)
    _backends.clear_resolution_cache()
    module = fusedgan.FusedBNReLU(3, backend="triton")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        module(torch.randn(2, 3, 4, 4))
    _backends.clear_resolution_cache()
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="'cuda' backend runs on cuda tensors"):
            fusedgan.FusedBNReLU(3, backend="cuda")(torch.randn(2, 3, 4, 4))


def test_module_keeps_its_backend_choice():
    module = fusedgan.FusedBNLeakyReLU(3, 0.2, backend="torch")
    assert module.backend == "torch"
    module(torch.randn(2, 3, 4, 4))


def test_python_m_fusedgan_reports_versions_and_backends():
    out = subprocess.run([sys.executable, "-m", "fusedgan"], capture_output=True, text=True, check=True).stdout
    assert f"fusedgan {fusedgan.__version__}" in out and f"torch    {torch.__version__}" in out
    for name in ("triton", "cuda", "cpu", "torch"):
        assert f"  {name}" in out
    assert "torch   usable" in out


def test_autograd_functions_take_any_backend_name():
    """The exported Functions resolve "auto" themselves and reject names that are not backends."""
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    w, b = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    y, _, _ = fusedgan.BatchNormActFunction.apply(x, w, b, None, None, True, 1e-5, 1, 0.0, "auto")
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="backend must be one of"):
        fusedgan.GroupNormActFunction.apply(x, w, b, 3, 1e-5, 1, 0.0, "gpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="runs on cuda tensors"):
            fusedgan.Conv2dLeakyReLUFunction.apply(x, torch.randn(2, 3, 3, 3), None, (1, 1), (0, 0), (1, 1), 1, 0.2,
                                                   "cuda")
