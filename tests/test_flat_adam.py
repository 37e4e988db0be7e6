"""FlatAdam is torch's Adam (with clipping) on one buffer, and training needs no torch._dynamo."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

from mfask.flat_adam import FlatAdam


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()


@pytest.mark.parametrize("clip", [None, 0.05])
def test_steps_equal_torch_adam_with_clip_grad_norm(clip) -> None:
    ours, theirs = small_net(), small_net()
    flat = FlatAdam(ours, 1e-2)
    reference = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(25):
        x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
        flat.zero_grad()
        ours(x).square().mean().backward()
        if clip is not None:
            flat.clip_grad_norm(clip)
        flat.step()
        reference.zero_grad()
        theirs(x).square().mean().backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), clip)
        reference.step()
    for mine, want in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(mine, want, rtol=1e-12, atol=1e-14)


def test_parameters_and_gradients_are_views_of_the_buffers() -> None:
    net = small_net()
    before = [p.detach().clone() for p in net.parameters()]
    flat = FlatAdam(net, 1e-3)
    assert flat.parameters.shape == (sum(p.numel() for p in before),)
    for parameter, value in zip(net.parameters(), before):
        assert torch.equal(parameter, value)  # values kept
    net(torch.ones(4, 3, dtype=torch.float64)).sum().backward()
    assert flat.gradients.abs().sum() > 0
    assert torch.equal(flat.gradients[:24], next(net.parameters()).grad.reshape(-1))
    snapshot = flat.snapshot()
    flat.step()
    assert not torch.equal(flat.parameters, snapshot)
    flat.restore(snapshot)
    assert torch.equal(next(net.parameters()).reshape(-1), snapshot[:24])
    clone = copy.deepcopy(net)  # copies (as MF-NPE makes) own their weights
    with torch.no_grad():
        next(clone.parameters()).add_(1.0)
    assert torch.equal(next(net.parameters()).reshape(-1), snapshot[:24])


def test_a_parameter_frozen_from_the_start_does_not_move() -> None:
    net = small_net()
    first = next(net.parameters())
    first.requires_grad_(False)
    value = first.detach().clone()
    flat = FlatAdam(net, 1e-2)
    for _ in range(5):
        flat.zero_grad()
        net(torch.ones(4, 3, dtype=torch.float64)).sum().backward()
        flat.step()
    assert torch.equal(first, value)
    first.requires_grad_(True)  # unfrozen: it trains
    flat.zero_grad()
    net(torch.ones(4, 3, dtype=torch.float64)).sum().backward()
    flat.step()
    assert not torch.equal(first, value)


def test_training_imports_no_torch_dynamo() -> None:
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import mfask
        post = mfask.MultiFidelityPosterior(mfask.BoxUniform([0.0], [1.0]), seed=0, verbose=False,
                                            training=mfask.TrainingConfig(max_epochs=3))
        theta = post.ask(30).theta
        post.tell(theta, theta * 2.0)
        import warnings
        warnings.simplefilter("ignore")
        post.fit()
        print("torch._dynamo" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_masked_step_matches_torch_adam_on_a_parameter_without_gradient() -> None:
    """Freezing part of a network for a while (torch: its .grad is None, so Adam
    leaves it and its moments alone) gives the same weights, after the release too."""
    ours, theirs = small_net(), small_net()
    flat = FlatAdam(ours, 1e-2)
    reference = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    first_size = next(ours.parameters()).numel()
    active = torch.ones_like(flat.parameters, dtype=torch.bool)
    active[:first_size] = False  # the first weight matrix frozen
    generator = torch.Generator().manual_seed(2)
    for step in range(20):
        x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
        frozen = step < 8
        flat.zero_grad()
        ours(x).square().mean().backward()
        flat.step(active if frozen else None)
        reference.zero_grad(set_to_none=True)
        theirs(x).square().mean().backward()
        if frozen:
            next(theirs.parameters()).grad = None
        reference.step()
    for mine, want in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(mine, want, rtol=1e-10, atol=1e-12)
