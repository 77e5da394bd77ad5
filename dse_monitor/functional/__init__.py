"""The functional core: pure torch math, no Lightning, no hooks, no files.

Kernels (:mod:`.kernel`), eigen-solvers and spectral entropy (:mod:`.spectrum`),
DSE and CSE (:mod:`.entropy`; the approximate solver: :mod:`.lanczos`), the
reference's variants (:mod:`.variants`), grouping of references (:mod:`.grouping`),
mutual information (:mod:`.mutual_information`), the scale diagnostics (:mod:`.scale`) and the
diffusion time from the data (:mod:`.diffusion_time`). The adaptive kNN kernel and density
normalisation (:mod:`.knn`), its sparse operator (:mod:`.sparse_operator`) and the approximate
solver for its indefinite spectrum (:mod:`.indefinite`). The representation-health metrics
beside DSE: RankMe, alpha-ReQ, kNN accuracy, linear CKA, the spectral gap (:mod:`.health`).

Every value function returns a tensor; the rich results come from functions named for
them: :func:`diffusion_spectral_entropy_details` (spectrum, path taken, bounds) and
:func:`diffusion_spectral_mutual_information_terms` (the terms per group).
"""
from .diffusion_time import diffusion_time_knee, entropy_curve, knee_of_curve, log_spectrum
from .entropy import (
    DiffusionEntropy,
    classic_shannon_entropy,
    diffusion_eigenvalues,
    diffusion_spectral_entropy,
    diffusion_spectral_entropy_details,
)
from .grouping import reference_groups
from .health import (
    AlphaReq,
    NotApplicable,
    alpha_req,
    diffusion_entropy_at_times,
    knn_accuracy,
    linear_cka,
    rankme,
    spectral_gap,
)
from .kernel import diffusion_kernel, resolve_sigma, squared_distances
from .lanczos import EntropyEstimate
from .classic_mutual_information import classic_shannon_mutual_information, classic_shannon_mutual_information_terms
from .mutual_information import (
    MutualInformationTerms,
    diffusion_spectral_mutual_information,
    diffusion_spectral_mutual_information_terms,
)
from .row_group import RowGroup
from .scale import (
    MedianSigma,
    median_pairwise_distance,
    median_sigma,
    normalised_entropy,
    scale_diagnosis,
    scale_warning,
)
from .spectrum import entropy_of_spectrum
from .variants import adjacency_spectral_entropy, matrix_entry_entropy

__all__ = [
    "AlphaReq",
    "NotApplicable",
    "alpha_req",
    "diffusion_entropy_at_times",
    "knn_accuracy",
    "linear_cka",
    "rankme",
    "spectral_gap",
    "DiffusionEntropy",
    "MedianSigma",
    "diffusion_time_knee",
    "entropy_curve",
    "knee_of_curve",
    "log_spectrum",
    "median_pairwise_distance",
    "median_sigma",
    "normalised_entropy",
    "scale_diagnosis",
    "scale_warning",
    "EntropyEstimate",
    "MutualInformationTerms",
    "RowGroup",
    "adjacency_spectral_entropy",
    "classic_shannon_entropy",
    "classic_shannon_mutual_information",
    "classic_shannon_mutual_information_terms",
    "diffusion_eigenvalues",
    "diffusion_kernel",
    "diffusion_spectral_entropy",
    "diffusion_spectral_entropy_details",
    "diffusion_spectral_mutual_information",
    "diffusion_spectral_mutual_information_terms",
    "entropy_of_spectrum",
    "matrix_entry_entropy",
    "reference_groups",
    "resolve_sigma",
    "squared_distances",
]
