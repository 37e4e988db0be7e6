"""Posterior samples as ArviZ data (mfask.arviz_interop), summarised by ArviZ."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch

import mfask
from mfask.arviz_interop import to_arviz

if importlib.util.find_spec("arviz") is None and importlib.util.find_spec("arviz_base") is None:
    pytest.skip("ArviZ is not installed (pip install 'mfask[arviz]')", allow_module_level=True)

XS = np.array([[0.0, 0.0], [1.0, -1.0], [0.5, 0.5]])


def arviz_0x():
    """arviz 0.x, or skip (its import warns about the coming 1.x refactor)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        arviz = pytest.importorskip("arviz")
    if int(arviz.__version__.split(".")[0]) >= 1:
        pytest.skip("ArviZ 1.x works with DataTree, not InferenceData")
    return arviz


def summary_of(kind: str):
    """ArviZ's summary for the kind of data: ``(data) -> DataFrame`` of unrounded values."""
    if kind == "inference_data":
        arviz = arviz_0x()
        return lambda data: arviz.summary(data, round_to="none")
    pytest.importorskip("arviz_base")
    arviz_stats = pytest.importorskip("arviz_stats")
    return lambda data: arviz_stats.summary(data, round_to=None)


def posterior_group(data, kind: str):
    return data["posterior"].to_dataset() if kind == "datatree" else data.posterior


@pytest.fixture(scope="module")
def trained_file(tmp_path_factory) -> str:
    post = mfask.MultiFidelityPosterior(
        mfask.BoxUniform([-2.0, -2.0], [2.0, 2.0], names=["a", "b"]), ["low", "high"], seed=0,
        flow=mfask.FlowConfig(hidden_features=16, num_transforms=2, num_bins=4),
        training=mfask.TrainingConfig(max_epochs=10),
    )
    generator = torch.Generator().manual_seed(1)
    for fidelity, count in (("low", 200), ("high", 100)):
        batch = post.ask(fidelity, count)
        noise = torch.randn(count, 2, generator=generator, dtype=torch.float64).numpy()
        post.tell(batch, batch.theta + 0.3 * noise)
    post.fit()
    path = tmp_path_factory.mktemp("arviz") / "trained.npz"
    post.save(path)
    return str(path)


def twins(path: str) -> tuple[mfask.MultiFidelityPosterior, mfask.MultiFidelityPosterior]:
    return mfask.MultiFidelityPosterior.load(path), mfask.MultiFidelityPosterior.load(path)


@pytest.mark.parametrize("kind", ["inference_data", "datatree"])
def test_samples_per_fidelity_and_observation_summarised_by_arviz(trained_file, kind):
    summary = summary_of(kind)
    post, twin = twins(trained_file)
    data = to_arviz(post, XS, fidelity=["low", "high"], num_draws=300, kind=kind)
    group = posterior_group(data, kind)
    assert sorted(group.data_vars) == ["a", "b"]
    assert dict(group.sizes) == {"chain": 1, "draw": 300, "fidelity": 2, "observation": 3}
    assert group["a"].dims == ("chain", "draw", "fidelity", "observation")
    assert group["fidelity"].values.tolist() == ["low", "high"]
    assert group["observation"].values.tolist() == [0, 1, 2]
    assert group.attrs["inference_library"] == "mfask"
    expected = {f: twin.sample_batched(300, XS, fidelity=f) for f in ("low", "high")}  # (3, 300, 2)
    for f, samples in expected.items():
        for i in range(3):
            np.testing.assert_array_equal(group["b"].sel(fidelity=f, observation=i).values[0], samples[i, :, 1])
    table = summary(data)
    assert len(table) == 2 * 2 * 3
    for column, name in enumerate(["a", "b"]):
        for f, samples in expected.items():
            for i in range(3):
                row = table.loc[f"{name}[{f}, {i}]"]
                assert row["mean"] == pytest.approx(samples[i, :, column].mean(), rel=1e-9, abs=1e-12)
                # ArviZ 0.x reports the sample sd (ddof=1), arviz_stats the plain one (ddof=0)
                ddof = 1 if kind == "inference_data" else 0
                assert row["sd"] == pytest.approx(samples[i, :, column].std(ddof=ddof), rel=1e-6)


@pytest.mark.parametrize("kind", ["inference_data", "datatree"])
def test_one_observation_at_one_fidelity_has_only_chain_and_draw(trained_file, kind):
    summary = summary_of(kind)
    post, twin = twins(trained_file)
    data = to_arviz(post, XS[1], fidelity=mfask.Fidelity("high"), num_draws=250, kind=kind)  # or "high"
    group = posterior_group(data, kind)
    assert dict(group.sizes) == {"chain": 1, "draw": 250}
    assert group.attrs["fidelity"] == "high"
    samples = twin.sample(250, XS[1], fidelity="high")
    np.testing.assert_array_equal(np.stack([group["a"].values[0], group["b"].values[0]], axis=1), samples)
    table = summary(data)
    assert table.index.tolist() == ["a", "b"]
    np.testing.assert_allclose(table["mean"].to_numpy(dtype=float), samples.mean(axis=0), rtol=1e-9)
    # several observations stay several, also one of them
    one_row = posterior_group(to_arviz(post, XS[:1], num_draws=10, kind=kind), kind)
    assert dict(one_row.sizes) == {"chain": 1, "draw": 10, "observation": 1}


def test_auto_picks_the_kind_of_the_installed_arviz(trained_file):
    post, _ = twins(trained_file)
    data = to_arviz(post, XS[0], num_draws=20)
    try:
        arviz = arviz_0x()
    except pytest.skip.Exception:  # ArviZ 1.x or arviz_base alone
        xarray = pytest.importorskip("xarray")
        assert isinstance(data, xarray.DataTree)
    else:
        assert isinstance(data, arviz.InferenceData)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda p: to_arviz(p, [1.0, 2.0, 3.0]), mfask.InvalidInputError, r"shape \(2,\) or several"),
        (lambda p: to_arviz(p, XS, num_draws=0), mfask.InvalidInputError, "num_draws"),
        (lambda p: to_arviz(p, XS, kind="netcdf"), mfask.InvalidInputError, "kind must be one of"),
        (lambda p: to_arviz(p, XS, fidelity=[]), mfask.InvalidInputError, "at least one"),
        (lambda p: to_arviz(p, XS, fidelity=["low", "medium"]), mfask.UnknownFidelityError, "'medium'"),
        (lambda p: to_arviz(p.data("high"), XS), mfask.InvalidInputError, "MultiFidelityPosterior"),
    ],
)
def test_bad_input_is_rejected_without_drawing(trained_file, call, error, message):
    post, twin = twins(trained_file)
    with pytest.raises(error, match=message):
        call(post)
    np.testing.assert_array_equal(post.sample(4, XS[0]), twin.sample(4, XS[0]))  # nothing was drawn


def test_parameter_named_like_a_dimension_is_rejected():
    post = mfask.MultiFidelityPosterior(mfask.BoxUniform([0.0, 0.0], [1.0, 1.0], names=["draw", "b"]), seed=0)
    with pytest.raises(mfask.InvalidInputError, match=r"\['draw'\] are ArviZ dimension names"):
        to_arviz(post, [0.5, 0.5])


def test_missing_arviz_is_an_import_error_that_says_what_to_install(trained_file, monkeypatch):
    from importlib import metadata

    def not_installed(distribution):
        raise metadata.PackageNotFoundError(distribution)

    monkeypatch.setattr(metadata, "version", not_installed)
    post, _ = twins(trained_file)
    for kind in ("auto", "datatree", "inference_data"):
        with pytest.raises(ImportError, match=r"mfask\[arviz\]|needs ArviZ 0.x"):
            to_arviz(post, XS[0], num_draws=5, kind=kind)
