"""Training losses: Soft-HGR maximal correlation (Ma et al. 2020) and knowledge distillation.

In:  feature batches [N, D] (rows = samples) and logits [N, C] as torch tensors.
Out: scalar tensors. `soft_hgr` and `hgr_three_way` are objectives to MAXIMIZE (subtract
them from a loss); `kd_loss` is a loss to minimize.

Soft-HGR of centred features f, g: E[f^T g] - 1/2 tr(cov(f) cov(g)). The expectation of
the centred product is estimated with the same unbiased 1/(N-1) normalisation as the
covariances, i.e. E[f^T g] = tr(cov(f, g)); then identical whitened k-dim features score
exactly k/2, the maximum for k dimensions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_hgr(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Soft-HGR objective of two [N, D] feature batches (N >= 2), to maximize."""
    if f.shape != g.shape or f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"soft_hgr needs two [N, D] batches with N >= 2, got {tuple(f.shape)} and {tuple(g.shape)}")
    n = f.shape[0]
    f = f - f.mean(dim=0, keepdim=True)
    g = g - g.mean(dim=0, keepdim=True)
    cross = (f * g).sum() / (n - 1)
    cov_f = f.T @ f / (n - 1)
    cov_g = g.T @ g / (n - 1)
    return cross - 0.5 * (cov_f * cov_g).sum()  # tr(A B) = sum(A * B^T), both symmetric


def hgr_three_way(fa: torch.Tensor | None, fv: torch.Tensor | None, fl: torch.Tensor | None,
                  mask_labeled: torch.Tensor) -> torch.Tensor:
    """Sum of Soft-HGR over (audio, visual) on all rows and (audio, label), (visual, label)
    on the labeled rows. A missing modality (None) or fewer than 2 usable rows drops a term."""
    mask = mask_labeled.bool()
    terms = []
    if fa is not None and fv is not None and fa.shape[0] >= 2:
        terms.append(soft_hgr(fa, fv))
    if fl is not None and int(mask.sum()) >= 2:
        terms += [soft_hgr(x[mask], fl[mask]) for x in (fa, fv) if x is not None]
    if not terms:
        ref = next(x for x in (fa, fv, fl) if x is not None)
        return ref.sum() * 0.0
    return torch.stack(terms).sum()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 4.0) -> torch.Tensor:
    """Hinton KD: KL(softmax(teacher/T) || softmax(student/T)) * T^2, mean over the batch."""
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / T, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * T * T
