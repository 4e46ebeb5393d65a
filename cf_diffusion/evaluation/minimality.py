"""Minimality: the counterfactual latent divergence (CLD) of Sanchez & Tsaftaris (2022).

A good counterfactual is as close to its factual image as the change of class allows. CLD measures this in
the latent space of an *unconditional* autoencoder trained on the dataset, whose encoder gives a
diagonal-Gaussian posterior `q(z | x) = N(mu(x), diag(exp(logvar(x))))` per image.
"""

import torch
from torch import Tensor

_CHUNK_ELEMENTS = 1 << 24


def diagonal_gaussian_kl(mu_p: Tensor, logvar_p: Tensor, mu_q: Tensor, logvar_q: Tensor) -> Tensor:
    """KL divergence between diagonal Gaussians, `KL(N(mu_p, diag var_p) || N(mu_q, diag var_q))`.

    `KL = 1/2 sum_d [log var_q,d - log var_p,d + (var_p,d + (mu_p,d - mu_q,d)^2) / var_q,d - 1]`,
    with `var = exp(logvar)`.

    Args:
        mu_p: Means of p, `Tensor[..., D]`.
        logvar_p: Log-variances of p, broadcastable with `mu_p`.
        mu_q: Means of q, broadcastable with `mu_p`.
        logvar_q: Log-variances of q, broadcastable with `mu_q`.

    Returns:
        `Tensor[...]`: the divergence, summed over the last (latent) dimension; broadcast over the others.
    """
    var_ratio = torch.exp(logvar_p - logvar_q)
    mean_term = (mu_p - mu_q) ** 2 * torch.exp(-logvar_q)
    return 0.5 * (logvar_q - logvar_p + var_ratio + mean_term - 1).sum(dim=-1)


def pairwise_diagonal_gaussian_kl(mu_p: Tensor, logvar_p: Tensor, mu_q: Tensor, logvar_q: Tensor) -> Tensor:
    """All pairwise divergences `KL(p_i || q_j)` between two sets of diagonal Gaussians.

    Args:
        mu_p: Means of the p's, `Tensor[N, D]`.
        logvar_p: Log-variances of the p's, `Tensor[N, D]`.
        mu_q: Means of the q's, `Tensor[M, D]`.
        logvar_q: Log-variances of the q's, `Tensor[M, D]`.

    Returns:
        `Tensor[N, M]` with entry `(i, j) = KL(p_i || q_j)` (see `diagonal_gaussian_kl`).
    """
    rows = max(1, _CHUNK_ELEMENTS // max(1, mu_q.numel()))
    return torch.cat(
        [
            diagonal_gaussian_kl(mu_p[i : i + rows, None], logvar_p[i : i + rows, None], mu_q[None], logvar_q[None])
            for i in range(0, len(mu_p), rows)
        ]
    )


def _posterior(pair: tuple[Tensor, Tensor], name: str) -> tuple[Tensor, Tensor]:
    if not isinstance(pair, tuple | list) or len(pair) != 2:
        raise ValueError(f"{name} must be a pair (mu, logvar) of Tensor[N, D], got {type(pair).__name__}")
    mu, logvar = (torch.as_tensor(x, dtype=torch.float64) for x in pair)
    if mu.ndim != 2 or mu.shape != logvar.shape:
        raise ValueError(
            f"{name} must be (mu, logvar) of equal shape [N, D], got {tuple(mu.shape)} and {tuple(logvar.shape)}"
        )
    return mu, logvar


def _labels(labels: Tensor, length: int, name: str) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.shape != (length,):
        raise ValueError(f"{name} must have shape [{length}], got {tuple(labels.shape)}")
    return labels


def cld(
    factual: tuple[Tensor, Tensor],
    counterfactual: tuple[Tensor, Tensor],
    reference: tuple[Tensor, Tensor],
    reference_labels: Tensor,
    factual_labels: Tensor,
    counterfactual_labels: Tensor,
    weight: float = 0.8,
) -> dict[str, Tensor]:
    """Counterfactual latent divergence per (factual, counterfactual) pair.

    With `q(z | x)` the autoencoder's posterior and KL the closed form of `diagonal_gaussian_kl`:

    - `d = KL(q(z | x_cf) || q(z | x_f))`, the divergence of the counterfactual from its factual image;
    - `S_cf = {KL(q(z | x_cf) || q(z | x_i)) : label_i = label_cf}`, the divergences of the counterfactual from
      the reference images of the counterfactual class;
    - `S_f = {KL(q(z | x_f) || q(z | x_i)) : label_i = label_f}`, the divergences of the factual image from the
      reference images of the factual class;
    - `CLD = log(w exp(P(S_cf <= d)) + (1 - w) exp(P(S_f >= d)))`, with P the fraction of the set, w = 0.8.

    `P(S_cf <= d)` is small when the counterfactual is nearer its factual image than to most images of its new
    class (minimal change); `P(S_f >= d)` is small when the counterfactual is farther from the factual image
    than most images of the factual class are (the class did change). Lower is better; CLD lies in [0, 1].
    In both sets the image being judged is the first argument of the KL, as in d. The reference images should
    be held out from the factual ones: a factual image among the references would enter `S_cf` at distance d.

    Args:
        factual: `(mu, logvar)` of the factual images' posteriors, each `Tensor[N, D]`.
        counterfactual: `(mu, logvar)` of the counterfactual images' posteriors, each `Tensor[N, D]`.
        reference: `(mu, logvar)` of the reference images' posteriors, each `Tensor[M, D]`.
        reference_labels: Class of each reference image, `Tensor[M]`.
        factual_labels: Class of each factual image, `Tensor[N]`.
        counterfactual_labels: Class each counterfactual was made for, `Tensor[N]`.
        weight: w, the weight of the counterfactual-class term, in [0, 1].

    Returns:
        `{"cld", "divergence", "p_cf", "p_f"}`, each `Tensor[N]` (float64): the CLD, d, `P(S_cf <= d)` and
        `P(S_f >= d)` of each pair.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    mu_f, logvar_f = _posterior(factual, "factual")
    mu_cf, logvar_cf = _posterior(counterfactual, "counterfactual")
    mu_ref, logvar_ref = _posterior(reference, "reference")
    if mu_cf.shape != mu_f.shape:
        raise ValueError(f"counterfactual must match factual's shape {tuple(mu_f.shape)}, got {tuple(mu_cf.shape)}")
    if mu_ref.shape[1] != mu_f.shape[1]:
        raise ValueError(f"reference must have latent size {mu_f.shape[1]}, got {mu_ref.shape[1]}")
    ref_labels = _labels(reference_labels, len(mu_ref), "reference_labels")
    f_labels = _labels(factual_labels, len(mu_f), "factual_labels")
    cf_labels = _labels(counterfactual_labels, len(mu_f), "counterfactual_labels")
    in_cf_class = cf_labels[:, None] == ref_labels[None, :]
    in_f_class = f_labels[:, None] == ref_labels[None, :]
    for mask, labels, name in ((in_cf_class, cf_labels, "counterfactual"), (in_f_class, f_labels, "factual")):
        empty = ~mask.any(dim=1)
        if empty.any():
            missing = sorted({str(v) for v in labels[empty].tolist()})
            raise ValueError(f"no reference image has the {name} class {missing}; every class needs references")

    d = diagonal_gaussian_kl(mu_cf, logvar_cf, mu_f, logvar_f)
    s_cf = pairwise_diagonal_gaussian_kl(mu_cf, logvar_cf, mu_ref, logvar_ref)
    s_f = pairwise_diagonal_gaussian_kl(mu_f, logvar_f, mu_ref, logvar_ref)
    p_cf = ((s_cf <= d[:, None]) & in_cf_class).sum(dim=1).double() / in_cf_class.sum(dim=1)
    p_f = ((s_f >= d[:, None]) & in_f_class).sum(dim=1).double() / in_f_class.sum(dim=1)
    value = torch.log(weight * torch.exp(p_cf) + (1 - weight) * torch.exp(p_f))
    return {"cld": value, "divergence": d, "p_cf": p_cf, "p_f": p_f}
