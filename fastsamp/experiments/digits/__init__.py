"""Small trained generative priors, classifiers and rewards on scikit-learn's 8×8 digits, for
outsourced diffusion sampling (Venkatraman et al.): sample p(x | y) ∝ p(x) r(x, y) of a generator
x = f(z), z ~ N(0, I), in its noise space, log π(z) = −½|z|² + λ log r(f(z), y).

Data (`load_digits_data`): the 1797 digits of `sklearn.datasets.load_digits`, pixels / 16 in [0, 1],
flattened to (N, 64), split once, deterministically (seed `SPLIT_SEED`) and stratified by class into
three disjoint parts:

    "prior"   1000 digits: trains the generators and the reward classifier,
    "heldout"  400 digits: trains the held-out evaluation classifier,
    "test"     397 digits: evaluation (accuracies, reference digits for Fréchet distances).

Generators (nn.Modules with `latent_dim` and `forward(z) -> x`, x in (0, 1)^64, differentiable in z;
returned frozen: eval mode, parameters without grad):

    VAEDecoder     MLP decoder of a VAE (Gaussian encoder, Bernoulli/BCE likelihood), latent 12,
    GANGenerator   MLP generator of a GAN (non-saturating loss, R1 penalty on the reals), latent 16,
    FlowGenerator  rectified flow: x = sigmoid(Φ(z)), Φ a fixed-step Heun integration from t = 0 to 1
                   of a learned velocity MLP, latent 64; the solver is plain torch, so f is differentiable.
                   The flow is trained on dequantised, squeezed logits of the pixels:
                   target = logit(α + (1 − 2α) x̃), x̃ = (16 x + u)/17, u ~ U(0, 1), α = 0.02, so its
                   samples sit on that (dequantised) scale: background pixels come out ≈ 0.02–0.08, not 0.

Each has `train_<kind>(data, *, steps=None, seed=0, size="full")`; `size="full"` trains in 1–3 minutes
(classifiers: 10–20 s) on one thread of a busy 2-core machine (`TRAIN_THREADS`), `size="tiny"` in well under
a second (for tests). Training is seeded and leaves the global RNG alone. `load_or_train(kind, ...)` caches
the weights (see its docstring). Sampling cost: f(z) is one MLP for the VAE and GAN, 15 velocity-MLP
evaluations for the flow (8 Heun steps, the last one Euler).

Classifiers (`DigitClassifier`, MLP 64 → 10 with `log_prob(x, y)` and `features(x)`): the reward
classifier (widths 256, 128, trained on "prior") and the held-out evaluation classifier (widths 128, 32,
trained on "heldout", another seed).

Rewards (`ClassReward`, `InpaintReward`), the noise-space target (`NoisePosterior`) and metrics
(`sample_metrics`, `prior_metrics`, `frechet_distance`, `mean_pairwise_distance`), and `save_grid`.

Where each part lives: `data` (split, shape and label checks), `networks` (generators, classifier),
`training` (recipes per size), `cache` (`load_or_train`), `rewards`, `posterior` (`NoisePosterior`),
`metrics` and `plotting`; this package re-exports their public names.

scikit-learn (the data) and scipy (`frechet_distance`) are imported lazily, as is matplotlib.
"""
from .cache import CACHE_VERSION, cache_path, cache_root, load_or_train
from .data import DIM, N_CLASSES, SPLIT_SEED, SPLIT_SIZES, SPLITS, load_digits_data, real_digits, split_indices
from .metrics import classifier_accuracy, frechet_distance, mean_pairwise_distance, prior_metrics, sample_metrics
from .networks import DigitClassifier, FlowGenerator, GANGenerator, VAEDecoder, sample_prior
from .plotting import save_grid
from .posterior import NoisePosterior
from .rewards import ClassReward, InpaintReward
from .training import (
    CONFIGS,
    KINDS,
    SIZES,
    TRAIN_THREADS,
    train_classifier,
    train_flow,
    train_gan,
    train_heldout_classifier,
    train_vae,
)

__all__ = [
    "DIM", "N_CLASSES", "SPLITS", "SPLIT_SIZES", "SPLIT_SEED", "KINDS", "SIZES", "CONFIGS", "TRAIN_THREADS",
    "CACHE_VERSION", "load_digits_data", "split_indices", "real_digits",
    "VAEDecoder", "GANGenerator", "FlowGenerator", "DigitClassifier",
    "train_vae", "train_gan", "train_flow", "train_classifier", "train_heldout_classifier",
    "load_or_train", "cache_root", "cache_path", "sample_prior",
    "ClassReward", "InpaintReward", "NoisePosterior",
    "frechet_distance", "mean_pairwise_distance", "classifier_accuracy", "sample_metrics", "prior_metrics",
    "save_grid",
]
