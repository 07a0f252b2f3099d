"""Numeric kernels for secure aggregation: clipping, ring quantization, modular sums,
and robust aggregation rules (median, trimmed mean, Krum, geometric median).

Each kernel is a Numba function behind a validating wrapper; plain-numpy
equivalents live in :mod:`kernels.reference`. This package depends on numpy
and numba only, so the appliance, the crypto layer and the clients can all
share it.
"""

from ._average import weighted_mean
from ._clip import clip_l2, l2_norm
from ._coordinate import coordinate_median, trim_count, trimmed_mean
from ._geomedian import geometric_median
from ._krum import krum, krum_scores, multi_krum, pairwise_sq_distances, require_byzantine_bound
from ._modular import mod_add_bytes_into, mod_add_into, mod_sub_into, mod_sum
from ._quantize import dequantize, quantization_scale, quantize

__all__ = [
    "clip_l2",
    "coordinate_median",
    "dequantize",
    "geometric_median",
    "krum",
    "krum_scores",
    "l2_norm",
    "mod_add_bytes_into",
    "mod_add_into",
    "mod_sub_into",
    "mod_sum",
    "multi_krum",
    "pairwise_sq_distances",
    "quantization_scale",
    "quantize",
    "require_byzantine_bound",
    "trim_count",
    "trimmed_mean",
    "weighted_mean",
]
