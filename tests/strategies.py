"""Hypothesis strategies shared by the property tests (tests/test_properties.py,
tests/test_div_properties.py)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays


@st.composite
def logit_pairs(draw, dtype=np.float64, max_rows=6):
    """Two (n, V) logit arrays of one shape, n in [1, max_rows], V from 1 to 2500, entries in
    [-1, 1] times one scale from 1e-3 to 1e4 (drawn in float64, then cast to ``dtype``)."""
    n = draw(st.integers(1, max_rows))
    v = draw(st.sampled_from([1, 2, 3, 51, 300, 2500]))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
    elems = st.floats(-1.0, 1.0, allow_nan=False, width=64)
    x = draw(arrays(np.float64, (n, v), elements=elems)) * scale
    z = draw(arrays(np.float64, (n, v), elements=elems)) * scale
    return x.astype(dtype), z.astype(dtype)
