"""Counterfactual metrics: effectiveness, composition, reversibility, minimality, realism, consistency."""

from cf_diffusion.evaluation.consistency import counterfactual_probability, preservation_rate, probability_in_bounds
from cf_diffusion.evaluation.effectiveness import accuracy, effectiveness, macro_f1
from cf_diffusion.evaluation.image_distance import ground_truth_distance, mae_255, ssim
from cf_diffusion.evaluation.minimality import cld, diagonal_gaussian_kl, pairwise_diagonal_gaussian_kl
from cf_diffusion.evaluation.realism import InceptionFeatures, features, fid, kid, load_inception
from cf_diffusion.evaluation.soundness import composition, reversibility

__all__ = [
    "InceptionFeatures",
    "accuracy",
    "cld",
    "composition",
    "counterfactual_probability",
    "diagonal_gaussian_kl",
    "effectiveness",
    "features",
    "fid",
    "ground_truth_distance",
    "kid",
    "load_inception",
    "macro_f1",
    "mae_255",
    "pairwise_diagonal_gaussian_kl",
    "preservation_rate",
    "probability_in_bounds",
    "reversibility",
    "ssim",
]
