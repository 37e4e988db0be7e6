"""MultiFidelityPosterior.map: the maximum a posteriori estimate (mfask.map_estimate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mfask
from mfask import BoxUniform, FlowConfig, MultiFidelityPosterior, TrainingConfig

X_INSIDE = np.array([0.5, -0.5])  # the posterior's mode is inside the box
X_EDGE = np.array([2.3, 0.0])  # beyond the box: the mode is on its edge a = 2


def train(tmp_path_factory, parameter_space: str, ensemble_size: int) -> str:
    post = MultiFidelityPosterior(
        BoxUniform([-2.0, -2.0], [2.0, 2.0], names=["a", "b"]), ["high"], seed=0,
        parameter_space=parameter_space, ensemble_size=ensemble_size,
        flow=FlowConfig(hidden_features=16, num_transforms=2, num_bins=4),
        training=TrainingConfig(max_epochs=20),
    )
    batch = post.ask("high", 300)
    noise = torch.randn(300, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    post.tell(batch, batch.theta + 0.3 * noise.numpy())
    post.fit()
    path = tmp_path_factory.mktemp("map") / f"{parameter_space}-{ensemble_size}.npz"
    post.save(path)
    return str(path)


@pytest.fixture(scope="module")
def support_file(tmp_path_factory) -> str:
    return train(tmp_path_factory, "support", 1)


@pytest.fixture(scope="module")
def unbounded_ensemble_file(tmp_path_factory) -> str:
    return train(tmp_path_factory, "unbounded", 2)


def local_grid_maximum(post: MultiFidelityPosterior, x_o: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, float]:
    """The best point of a 201 x 201 grid of spacing 0.001 around ``centre``
    (inside the box) and its log density."""
    offsets = np.linspace(-0.1, 0.1, 201)
    grid = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), axis=-1).reshape(-1, 2) + centre
    grid = grid[post.prior.in_support(torch.from_numpy(grid)).numpy()]
    values = post.log_prob(grid, x_o)
    return grid[np.argmax(values)], float(values.max())


@pytest.mark.parametrize("file_fixture", ["support_file", "unbounded_ensemble_file"])
@pytest.mark.parametrize("x_o", [X_INSIDE, X_EDGE], ids=["inside", "edge"])
def test_map_is_the_densitys_mode(request, file_fixture, x_o):
    post = MultiFidelityPosterior.load(request.getfixturevalue(file_fixture))
    estimate = post.map(x_o, num_steps=30)
    assert estimate.shape == (2,) and estimate.dtype == np.float64
    assert post.prior.in_support(torch.from_numpy(estimate[None, :])).all()
    best_point, best_value = local_grid_maximum(post, x_o, estimate)
    # no grid point near the estimate beats it (up to float32 flow noise), and
    # the gradient steps improve on the best of the samples
    assert post.log_prob(estimate, x_o)[0] >= best_value - 1e-4
    assert np.abs(estimate - best_point).max() <= 0.01  # ten grid spacings (flat directions)
    best_sample = post.map(x_o, num_steps=0)
    assert post.log_prob(estimate, x_o)[0] > post.log_prob(best_sample, x_o)[0]
    if x_o is X_EDGE and file_fixture == "support_file":
        # cut at the edge, the density is highest there (a flow on the
        # unbounded space instead vanishes at the edge: its mode is inside)
        assert estimate[0] > 1.9


def test_map_without_steps_is_the_best_of_the_samples(tmp_path, support_file):
    post, twin = (MultiFidelityPosterior.load(support_file) for _ in range(2))
    estimate = post.map(X_INSIDE, num_samples=400, num_steps=0)
    samples = twin.sample(400, X_INSIDE)  # map draws from the sample stream
    np.testing.assert_array_equal(estimate, samples[np.argmax(twin.log_prob(samples, X_INSIDE))])
    # and the streams agree afterwards
    np.testing.assert_array_equal(post.sample(3, X_INSIDE), twin.sample(3, X_INSIDE))


def test_map_leaves_no_gradients_on_the_flows(support_file):
    post = MultiFidelityPosterior.load(support_file)
    post.map(X_INSIDE, num_steps=5)
    for member in post.posterior().members:
        assert all(parameter.grad is None for parameter in member.parameters())


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"num_samples": 0}, "num_samples must be a positive integer"),
        ({"num_starts": 1.5}, "num_starts must be a positive integer"),
        ({"num_steps": -1}, "num_steps must be a non-negative integer"),
        ({"num_steps": True}, "num_steps must be a non-negative integer"),
    ],
)
def test_map_rejects_bad_settings_without_drawing(support_file, settings, message):
    post, twin = (MultiFidelityPosterior.load(support_file) for _ in range(2))
    with pytest.raises(mfask.InvalidInputError, match=message):
        post.map(X_INSIDE, **settings)
    with pytest.raises(mfask.InvalidInputError, match=r"shape \(2,\)"):
        post.map([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(post.sample(3, X_INSIDE), twin.sample(3, X_INSIDE))
