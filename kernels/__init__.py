"""Numeric kernels for secure aggregation: clipping, ring quantization, modular sums.

Each kernel is a Numba function behind a validating wrapper; plain-numpy
equivalents live in :mod:`kernels.reference`. This package depends on numpy
and numba only, so the appliance, the crypto layer and the clients can all
share it.
"""

from ._average import weighted_mean
from ._clip import clip_l2, l2_norm
from ._modular import mod_add_bytes_into, mod_add_into, mod_sub_into, mod_sum
from ._quantize import dequantize, quantization_scale, quantize

__all__ = [
    "clip_l2",
    "dequantize",
    "l2_norm",
    "mod_add_bytes_into",
    "mod_add_into",
    "mod_sub_into",
    "mod_sum",
    "quantization_scale",
    "quantize",
    "weighted_mean",
]
