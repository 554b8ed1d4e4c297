"""Distances between two sets of feature vectors, any feature space: the Frechet distance (the FID
formula) and the kernel distance (the KID formula)."""

import torch


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), in float64.

    Tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of
    S_a^(1/2) S_b S_a^(1/2), which is symmetric PSD, so no complex sqrtm is needed.
    """
    a, b = a.double(), b.double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two [N, D] feature sets of equal D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least 2 samples per set for a covariance")
    mean_term = (a.mean(0) - b.mean(0)).pow(2).sum()
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    sqrt_a = _psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mean_term + cov_a.trace() + cov_b.trace() - 2 * cross).clamp(min=0))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def kernel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kernel distance (KID): the unbiased estimate of the squared MMD with the polynomial kernel
    k(x, y) = (x.y / D + 1)^3, in float64. Unlike FD it has no bias at small sample sizes, so two
    samples of one model score about 0 (and may score slightly below)."""
    a, b = a.double(), b.double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two [N>=2, D] feature sets of equal D, got {tuple(a.shape)} and {tuple(b.shape)}")
    dim = a.shape[1]

    def kernel(x, y):
        return (x @ y.T / dim + 1) ** 3

    k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    m, n = len(a), len(b)
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())
