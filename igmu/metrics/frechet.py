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


def resampled_frechet(a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each bootstrap resample of the pairs (a[i], b[i]), the FD between the resampled sets and
    the resampled b's total variance (covariance trace), in float64: ([R], [R]).

    `counts[r, i]` is how often pair i is drawn in resample r. Equal to `frechet_distance(a[idx],
    b[idx])` per resample, but computed in sample space, so no D x D matrix square root per resample:
    with centred, count-weighted rows F_a = W^(1/2) A_c / sqrt(n-1) (so S_a = F_a^T F_a), the trace
    Tr((S_a S_b)^(1/2)) is the nuclear norm of F_a F_b^T, an n x n matrix, and only rows that were
    drawn count, so each resample's matrix shrinks to its drawn pairs."""
    a, b, counts = a.double(), b.double(), counts.to(a.device, torch.float64)
    n = a.shape[0]
    if n < 2 or a.ndim != 2 or b.shape != a.shape:
        return (torch.full((len(counts),), float("nan"), dtype=torch.float64),) * 2
    mean_a, mean_b = counts @ a / n, counts @ b / n
    mean_term = (mean_a - mean_b).pow(2).sum(-1)
    variance_a = (counts @ a.pow(2).sum(1) - n * mean_a.pow(2).sum(-1)) / (n - 1)
    variance_b = (counts @ b.pow(2).sum(1) - n * mean_b.pow(2).sum(-1)) / (n - 1)
    gram = a @ b.T
    chunk = max(1, 2**22 // (n * n))  # resamples per batch of n x n matrices: about 32 MB each
    cross = torch.cat([_resampled_cross(gram, counts[start:start + chunk]) for start in range(0, len(counts), chunk)])
    distance = (mean_term + variance_a + variance_b - 2 * cross).clamp(min=0)
    return distance.cpu(), variance_b.cpu()


def _resampled_cross(gram: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Tr((S_a S_b)^(1/2)) per resample, from the Gram matrix a b^T of the pairs."""
    n = gram.shape[0]
    a_dot_mean_b = counts @ gram.T / n            # [R, n]: a_i . mean_b
    mean_a_dot_b = counts @ gram / n              # [R, n]: mean_a . b_j
    means_dot = (counts * a_dot_mean_b).sum(-1) / n  # mean_a . mean_b
    drawn = int((counts > 0).sum(1).max())
    # Each resample's drawn pairs first (undrawn ones carry weight 0 and add only zero rows).
    keep = torch.argsort(counts, dim=1, descending=True, stable=True)[:, :drawn]
    centred = (gram[keep[:, :, None], keep[:, None, :]] - mean_a_dot_b.gather(1, keep)[:, None, :]
               - a_dot_mean_b.gather(1, keep)[:, :, None] + means_dot[:, None, None])
    root = counts.gather(1, keep).sqrt()
    f = root[:, :, None] * centred * root[:, None, :] / (n - 1)
    return torch.linalg.eigvalsh(f @ f.transpose(1, 2)).clamp(min=0).sqrt().sum(-1)
