"""Type aliases of the public API (annotations only; nothing here runs at call time)."""
from __future__ import annotations

from typing import Any, Literal

from numpy.typing import ArrayLike

__all__ = ["ArrayLike", "Result", "Backend", "Reduction", "Inputs"]

#: What a public function returns: a numpy array or numpy scalar for numpy (or list) input;
#: for a torch tensor / JAX array / CuPy array argument, that library's array (a 0-d one for a
#: reduction).  ``Any`` because the library is the caller's.
Result = Any

Backend = Literal["auto", "numba", "cython", "numpy", "cuda"]
Reduction = Literal["none", "mean", "sum"]
Inputs = Literal["logits", "log_probs", "probs"]
