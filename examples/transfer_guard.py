"""The transfer guard: what MF-NPE does when the low fidelity is useless.

The low-fidelity "simulator" here returns noise that does not depend on the
parameters, the high fidelity is informative. The guard (on by default)
trains the fine-tuned network and one on the high-fidelity data alone, and
keeps the better one, or blends them when the held-out rows cannot tell them
apart. The script prints the decision, what each trained network was, and
the held-out NLL of NPE, unguarded MF-NPE and guarded MF-NPE on the same
high-fidelity data; then the guarded MF-NPE once more with fine-tuning that
keeps more of the pre-training (``FineTuningConfig``: an L2-SP pull towards
the low fidelity's weights and the conditioner trunk frozen for the first
epochs, see ``docs/fine_tuning.md``). With this useless low fidelity
there is nothing worth keeping, and the guard judges that candidate
against the HF-only one as it judges plain fine-tuning.

Run: ``python examples/transfer_guard.py`` (three to four minutes on two cores,
most of it scoring 500 test pairs;
``--quick`` for a smoke run of a few seconds).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import mfask


def simulate_high(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Informative: ``x = theta + N(0, 0.1^2)``, ``(n, 2) -> (n, 2)``."""
    return theta + 0.1 * rng.standard_normal(theta.shape)


def simulate_useless_low(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Carries no information: noise of the same shape, ``(n, 2) -> (n, 2)``."""
    return rng.standard_normal(theta.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets and networks")
    args = parser.parse_args()
    num_low, num_high, num_test = (200, 40, 50) if args.quick else (2000, 100, 500)
    flow = mfask.FlowConfig(hidden_features=16, num_transforms=2) if args.quick else mfask.FlowConfig()
    training = mfask.TrainingConfig(max_epochs=10 if args.quick else 500)

    prior = mfask.BoxUniform([-1.0, -1.0], [1.0, 1.0], names=["a", "b"])
    rng = np.random.default_rng(0)
    theta_test = prior.sample(num_test, torch.Generator().manual_seed(1)).numpy()
    x_test = simulate_high(theta_test, rng)

    def held_out_nll(post: mfask.MultiFidelityPosterior) -> float:
        return -float(np.mean(post.log_prob_batched(theta_test[:, None, :], x_test)))

    npe = mfask.MultiFidelityPosterior(prior, ["high"], seed=0, flow=flow, training=training, verbose=False)
    high = npe.ask("high", num_high)
    x_high = simulate_high(high.theta, rng)
    npe.tell(high, x_high)
    results = {"NPE (HF only)": held_out_nll(npe)}

    keep_more = mfask.FineTuningConfig(l2sp=30.0, freeze_epochs=20)
    variants = {"MF-NPE, transfer_guard=False": (False, mfask.FineTuningConfig()),
                "MF-NPE, transfer_guard=True": (True, mfask.FineTuningConfig()),
                "MF-NPE, guarded, L2-SP+frozen": (True, keep_more)}
    for name, (guard, fine_tuning) in variants.items():
        post = mfask.MultiFidelityPosterior(prior, ["low", "high"], seed=0, flow=flow, training=training,
                                            transfer_guard=guard, fine_tuning=fine_tuning, verbose=False)
        low = post.ask("low", num_low)
        post.tell(low, simulate_useless_low(low.theta, np.random.default_rng(2)))
        post.tell(high.theta, x_high, "high", unasked="prior")  # the same HF runs as NPE's
        post.fit()
        results[name] = held_out_nll(post)
        if guard:
            print(f"{name} ({fine_tuning}):")
            choice = post.transfer_choice("high")
            print(f"  guard's decision at 'high': {choice.chosen} (held-out -log q: fine-tuned "
                  f"{choice.fine_tuned_loss:.3f}, HF-only {choice.hf_only_loss:.3f}; paired difference "
                  f"{choice.difference:+.3f} +- {choice.standard_error:.3f} over {choice.num_rows} rows)")
            for history in post.training_histories("high")[-1]:
                print(f"    {history.candidate:>10} network: started {history.start}, "
                      f"{history.epochs} epochs in {history.seconds:.1f} s, kept: {history.selected}")

    print(f"held-out NLL over {num_test} HF pairs (lower is better):")
    for name, value in results.items():
        print(f"  {name:<30} {value:.3f}")


if __name__ == "__main__":
    main()
