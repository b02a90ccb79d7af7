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


def _stock_pair(fused):
    """The stock layers a fused BatchNorm+activation module replaces, with its state."""
    bn = torch.nn.BatchNorm2d(fused.num_features, fused.eps, fused.momentum)
    bn.load_state_dict(fused.state_dict())
    return torch.nn.Sequential(bn, torch.nn.LeakyReLU(fused.negative_slope) if hasattr(fused, "negative_slope")
                               else torch.nn.ReLU())


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layer", ["relu", "leaky_relu"])
def test_torch_backend_plain_calls_are_stock_ops(monkeypatch, layer, training, momentum):
    """The "torch" backend's plain eager calls run stock's ops themselves (functional.STOCK_ENTRIES):
    stock's bits, gradients, running statistics and batch count, without the Python path's checks."""
    from fusedgan import functional as fn

    def python_path(*args, **kwargs):
        raise AssertionError("a plain call reached the checked Python path")

    monkeypatch.setattr(fn, "_checked_batch_norm_act", python_path)
    monkeypatch.setattr(fn, "_checked_conv2d_leaky_relu", python_path)
    fused = (fusedgan.FusedBNReLU(5, momentum=momentum, backend="torch") if layer == "relu" else
             fusedgan.FusedBNLeakyReLU(5, 0.2, momentum=momentum, backend="torch"))
    with torch.no_grad():
        fused.weight.uniform_(0.5, 1.5)
        fused.bias.uniform_(-0.5, 0.5)
    stock = _stock_pair(fused)
    fused.train(training)
    stock.train(training)
    x = torch.randn(4, 5, 3, 3, requires_grad=True)
    for _ in range(2):
        ours, theirs = fused(x), stock(x)
        assert torch.equal(ours, theirs)
        grads = [torch.autograd.grad(y.square().sum(), (x, m.weight, m.bias))
                 for y, m in ((ours, fused), (theirs, stock[0]))]
        for a, b in zip(*grads):
            assert torch.equal(a, b)
    for name, buffer in stock[0].named_buffers():
        assert torch.equal(getattr(fused, name), buffer), name
    y = fn.batch_norm_act(x, fused.running_mean, fused.running_var, fused.weight, fused.bias, training, 0.1, 1e-5,
                          layer, 0.2, backend="torch")
    bn = torch.nn.functional.batch_norm(x, stock[0].running_mean, stock[0].running_var, stock[0].weight,
                                        stock[0].bias, training, 0.1, 1e-5)
    assert torch.equal(y, stock[1](bn))
    w, b = torch.randn(6, 5, 3, 3), torch.randn(6)
    assert torch.equal(fn.conv2d_leaky_relu(x, w, b, 1, 1, negative_slope=0.2, backend="torch"),
                       torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(x, w, b, 1, 1), 0.2))


def test_torch_backend_checks_what_stock_would_let_through():
    """Stock's ops take any eps, slope and momentum and unbatched or meta-weighted convolutions;
    the "torch" backend's fast path sends those to the checks, which name the argument."""
    from fusedgan.functional import batch_norm_act, conv2d_leaky_relu

    x, C = torch.randn(2, 3, 4, 4), 3
    stats = torch.zeros(C), torch.ones(C)
    for kwargs, message in [({"eps": -1.0}, "eps must be >= 0"), ({"eps": float("nan")}, "eps must be a finite"),
                            ({"negative_slope": float("inf")}, "negative_slope must be a finite"),
                            ({"momentum": float("nan")}, "momentum must be a finite")]:
        with pytest.raises(ValueError, match=message):
            batch_norm_act(x, *stats, training=True, backend="torch", **kwargs)
    module = fusedgan.FusedBNReLU(C, backend="torch")
    module.momentum = "fast"
    with pytest.raises(ValueError, match="momentum must be a finite number, got 'fast'"):
        module(x)
    w = torch.randn(4, C, 3, 3)
    with pytest.raises(ValueError, match=r"input must have shape \(N, C, H, W\)"):
        conv2d_leaky_relu(x[0], w, backend="torch")
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        conv2d_leaky_relu(x, w, negative_slope=-0.1, backend="torch")
    with pytest.raises(ValueError, match="bias is on meta but input is on cpu"):
        conv2d_leaky_relu(x, w, torch.zeros(4, device="meta"), backend="torch")
