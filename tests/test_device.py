"""``device=``: resolving device names, the plumbing that keeps data on the CPU
and weights on the device, and (where this machine has one) a real GPU run.

This machine's CI has no GPU, so the plumbing is checked two ways that need
none: a scan of the modules whose tensors live with the weights for tensors
created without a device, and runs on the CPU through the same code paths
(batches moved per step, results handed back on the caller's device). The
GPU tests run only where ``torch.cuda`` or MPS is available.
"""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
import torch

import mfask
from mfask import MultiFidelityPosterior, TrainingConfig
from mfask.device import resolve_device
from mfask.errors import DeviceUnavailableError, InvalidInputError, MfaskError
from mfask.estimator import ConditionalFlow, FlowConfig

MFASK = pathlib.Path(mfask.__file__).parent

SMALL = FlowConfig(hidden_features=8, num_transforms=2, num_bins=4)
QUICK = TrainingConfig(max_epochs=3, batch_size=32)

ACCELERATORS = [
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")),
    pytest.param("mps", marks=pytest.mark.skipif(
        not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        reason="no Apple MPS here")),
]


def _no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


# ----------------------------------------------------------------- resolving
@pytest.mark.parametrize("spec", ["cpu", "CPU", " cpu ", torch.device("cpu"), "cpu:0"])
def test_cpu_spellings_resolve_to_the_cpu(spec: object) -> None:
    assert resolve_device(spec) == torch.device("cpu")  # type: ignore[arg-type]


def test_auto_takes_cuda_then_mps_then_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_accelerators(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("AUTO") == torch.device("cuda")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "mps", torch.device("cuda", 1)])
def test_a_missing_accelerator_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, spec: object) -> None:
    _no_accelerators(monkeypatch)
    with pytest.raises(DeviceUnavailableError, match="device='cpu' or 'auto'"):
        resolve_device(spec)  # type: ignore[arg-type]


def test_a_gpu_index_beyond_those_present_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceUnavailableError, match="2 CUDA device.*cuda:0 to cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "tpu", "meta", "cuda:x", "", 0, None, 1.5])
def test_other_names_are_invalid_input(spec: object) -> None:
    with pytest.raises(InvalidInputError, match="device must be"):
        resolve_device(spec)  # type: ignore[arg-type]


def _prior() -> mfask.Prior:
    return mfask.BoxUniform([-2.0, -2.0], [2.0, 2.0])


def test_every_entry_point_refuses_an_unavailable_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    post = MultiFidelityPosterior(_prior(), seed=0, flow=SMALL, training=QUICK, verbose=False)
    theta = post.ask("high", 40).theta
    post.tell(theta, theta + 0.1)
    path = tmp_path / "post.npz"
    post.save(path)
    _no_accelerators(monkeypatch)
    with pytest.raises(DeviceUnavailableError):
        MultiFidelityPosterior(_prior(), device="cuda")
    with pytest.raises(DeviceUnavailableError):
        MultiFidelityPosterior.load(path, device="cuda:0")
    study_path = tmp_path / "study.db"
    mfask.create_study(study_path, _prior(), seed=0).close()
    with pytest.raises(DeviceUnavailableError):
        mfask.open_study(study_path, device="mps")
    with pytest.raises(DeviceUnavailableError):
        mfask.create_study(study_path, _prior(), seed=0, load_if_exists=True, device="cuda")
    with mfask.open_study(study_path, device="auto") as study:  # resolves to the CPU here
        assert study.status()["total"]["pending"] == 0


# ----------------------------------------------------------------- plumbing
#: modules whose tensors live on the flows' device
_DEVICE_SIDE = ["estimator.py", "lean_log_prob.py", "flat_adam.py", "fine_tuning.py", "grouped_log_prob.py",
                "grouped_training.py"]
_FACTORIES = {"zeros", "ones", "empty", "full", "eye", "arange", "linspace", "randn", "rand",
              "randint", "randperm", "tensor", "as_tensor"}


def _factory_calls_without_device(source: str) -> list[str]:
    """``torch.<factory>(...)`` calls with no ``device=``, outside ``__init__``
    (a module is built on the CPU and then moved) and not commented as made ``on the CPU``."""
    lines = source.splitlines()
    found = []
    tree = ast.parse(source)
    constructors = [node for node in ast.walk(tree)
                    if isinstance(node, ast.FunctionDef) and node.name in ("__init__", "_context_dim")]
    inside_constructor = {id(child) for function in constructors for child in ast.walk(function)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and node.func.attr in _FACTORIES):
            continue
        if id(node) in inside_constructor or any(k.arg == "device" for k in node.keywords):
            continue
        line = lines[node.lineno - 1]
        if "on the CPU" not in line.partition("#")[2]:
            found.append(f"{node.lineno}: {line.strip()}")
    return found


@pytest.mark.parametrize("module", _DEVICE_SIDE)
def test_device_side_modules_create_no_tensor_on_a_fixed_device(module: str) -> None:
    source = (MFASK / module).read_text()
    assert _factory_calls_without_device(source) == []
    assert ".cpu()" not in source and 'device="cpu"' not in source and "device='cpu'" not in source


def test_the_scan_finds_a_tensor_created_without_a_device() -> None:
    assert _factory_calls_without_device("import torch\ndef f(u):\n    return torch.eye(3) + u\n")
    assert not _factory_calls_without_device(
        "import torch\ndef f(u):\n    return torch.eye(3, device=u.device) + u\n")


def test_flow_results_come_back_on_the_inputs_device_with_gradients() -> None:
    torch.manual_seed(0)
    flow = ConditionalFlow(2, (3,), SMALL).to(resolve_device("cpu"))
    z, x = torch.randn(20, 2), torch.randn(20, 3)
    flow.set_standardization(z, x)
    z.requires_grad_(True)
    log_q = flow.log_prob(z, x)
    assert log_q.device == z.device and log_q.shape == (20,)
    log_q.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert flow.sample(4, x[:2]).shape == (2, 4, 2)
    assert flow.push_forward(torch.zeros(5, 2), x[:5]).device == torch.device("cpu")


def test_sampling_draws_the_same_base_noise_as_push_forward() -> None:
    """The base noise of ``sample`` comes from the CPU stream whatever the
    device, so a seed fixes the draws everywhere; here: ``sample`` equals
    ``push_forward`` of the CPU draws it made."""
    torch.manual_seed(1)
    flow = ConditionalFlow(2, (3,), SMALL)
    x = torch.randn(3, 3)
    torch.manual_seed(7)
    drawn = flow.sample(5, x)
    torch.manual_seed(7)
    noise = torch.randn(15, 2)
    expected = flow.push_forward(noise, x.repeat_interleave(5, dim=0)).reshape(3, 5, 2)
    torch.testing.assert_close(drawn, expected)


def test_a_posterior_keeps_its_device_and_flows_live_on_it(tmp_path: pathlib.Path) -> None:
    post = MultiFidelityPosterior(_prior(), seed=0, flow=SMALL, training=QUICK, verbose=False,
                                  device="cpu")
    assert post.device == torch.device("cpu")
    theta = post.ask("high", 60).theta
    post.tell(theta, theta + 0.1)
    samples = post.sample(10, x=[0.0, 0.0])
    assert samples.shape == (10, 2)
    assert {p.device for flow in post._levels[0].members for p in flow.parameters()} == {post.device}
    post.save(tmp_path / "p.npz")
    loaded = MultiFidelityPosterior.load(tmp_path / "p.npz", verbose=False, device="auto")
    np.testing.assert_array_equal(loaded.log_prob(theta[:5], x=[0.1, 0.1]),
                                  post.log_prob(theta[:5], x=[0.1, 0.1]))


# ----------------------------------------------------------------- real GPUs
@pytest.mark.parametrize("device", ACCELERATORS)
def test_training_and_queries_on_an_accelerator(device: str, tmp_path: pathlib.Path) -> None:
    """Where a GPU exists: the same asks as on the CPU, training and sampling
    on the GPU, samples back on the CPU, and a state saved from the GPU that
    loads on the CPU with the same densities."""
    options = dict(seed=3, flow=SMALL, training=QUICK, verbose=False)
    on_cpu = MultiFidelityPosterior(_prior(), **options)
    on_gpu = MultiFidelityPosterior(_prior(), **options, device=device)
    theta = on_gpu.ask("high", 80).theta
    np.testing.assert_array_equal(theta, on_cpu.ask("high", 80).theta)
    on_gpu.tell(theta, theta + 0.1)
    samples = on_gpu.sample(50, x=[0.0, 0.0])
    assert isinstance(samples, np.ndarray) and np.isfinite(samples).all()
    on_gpu.save(tmp_path / "gpu.npz")
    back = MultiFidelityPosterior.load(tmp_path / "gpu.npz", verbose=False)
    assert back.device == torch.device("cpu")
    np.testing.assert_allclose(back.log_prob(theta[:8], x=[0.1, 0.1]),
                               on_gpu.log_prob(theta[:8], x=[0.1, 0.1]), atol=1e-4)


def test_device_errors_are_mfask_errors() -> None:
    assert issubclass(DeviceUnavailableError, MfaskError)
    assert issubclass(DeviceUnavailableError, RuntimeError)


def test_cli_and_benchmark_runner_take_a_device(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from mfask.benchmarks.__main__ import build_parser
    from mfask.benchmarks.methods import MethodConfig
    from mfask.cli import EXIT_CODES, main

    study = tmp_path / "s.db"
    mfask.create_study(study, _prior(), seed=0).close()
    _no_accelerators(monkeypatch)
    assert main(["fit", str(study), "-q", "--device", "cuda"]) == EXIT_CODES["input"]
    assert "CUDA" in capsys.readouterr().err
    assert build_parser().parse_args(["--device", "mps"]).device == "mps"
    assert "device" not in MethodConfig().to_dict()  # CPU jobs keep the keys they had
    assert MethodConfig.from_dict(MethodConfig(device="cuda").to_dict()).device == "cuda"
