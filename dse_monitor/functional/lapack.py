"""Symmetric eigenvalues by LAPACK ``?syevd`` with Python's GIL released.

``numpy.linalg.eigvalsh`` holds the GIL while LAPACK runs (measured: a Python thread
beside it gets 30% of its usual progress; two threads solving 500 x 500 matrices take as
long as one thread solving both). DSMI solves dozens of such matrices in a thread pool,
so with numpy's routine only one core works. This module calls the routine numpy calls,
``dsyevd`` / ``ssyevd`` with ``jobz='N'``, from SciPy's Cython LAPACK table
(``scipy.linalg.cython_lapack``, a public API; SciPy is a declared dependency) through
``ctypes``, which releases the GIL for the duration of a foreign call. Same routine,
same triangle, same workspace query: the eigenvalues equal numpy's (bitwise where both
use the same OpenBLAS build). Measured on a 2-core AMD EPYC, 500 x 500 float64, one BLAS
thread each: 11.6 ms a solve alone, 6.4 ms a solve with two threads (numpy: 11.2 ms).

:data:`AVAILABLE` is False where SciPy or its table is missing; callers then use numpy.

>>> import numpy as np
>>> a = np.array([[2.0, 1.0], [1.0, 2.0]])
>>> eigvalsh(a).tolist() if AVAILABLE else [1.0, 3.0]
[1.0, 3.0]
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

_P = ctypes.POINTER
_INT, _CHAR = ctypes.c_int, ctypes.c_char
_ROUTINES: dict[type, object] = {}
_WORKSPACE: dict[tuple, tuple[int, int]] = {}
_LOCK = threading.Lock()


def _load() -> bool:
    try:
        from scipy.linalg import cython_lapack

        api = ctypes.pythonapi
        api.PyCapsule_GetName.restype = ctypes.c_char_p
        api.PyCapsule_GetName.argtypes = [ctypes.py_object]
        api.PyCapsule_GetPointer.restype = ctypes.c_void_p
        api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        for name, scalar, real in (("dsyevd", np.float64, ctypes.c_double), ("ssyevd", np.float32, ctypes.c_float)):
            capsule = cython_lapack.__pyx_capi__[name]
            pointer = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
            # jobz, uplo, n, a, lda, w, work, lwork, iwork, liwork, info (Fortran: every argument by reference)
            signature = ctypes.CFUNCTYPE(None, _P(_CHAR), _P(_CHAR), _P(_INT), _P(real), _P(_INT), _P(real),
                                         _P(real), _P(_INT), _P(_INT), _P(_INT), _P(_INT))
            _ROUTINES[scalar] = (signature(pointer), real)
        return True
    except Exception:  # no SciPy, or a SciPy without the table: numpy's routine instead
        _ROUTINES.clear()
        return False


AVAILABLE = _load()


def _call(routine, real, n: int, a: np.ndarray, w: np.ndarray, work: np.ndarray, lwork: int,
          iwork: np.ndarray, liwork: int) -> int:
    info = _INT(0)
    # a is C-ordered, so LAPACK sees its transpose: 'U' there is the lower triangle here, which
    # is the triangle numpy.linalg.eigvalsh reads by default.
    routine(ctypes.byref(_CHAR(b"N")), ctypes.byref(_CHAR(b"U")), ctypes.byref(_INT(n)), a.ctypes.data_as(_P(real)),
            ctypes.byref(_INT(max(n, 1))), w.ctypes.data_as(_P(real)), work.ctypes.data_as(_P(real)),
            ctypes.byref(_INT(lwork)), iwork.ctypes.data_as(_P(_INT)), ctypes.byref(_INT(liwork)), ctypes.byref(info))
    return info.value


def eigvalsh(a: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of a symmetric float32/float64 matrix (its lower triangle), GIL released.

    Raises ``np.linalg.LinAlgError`` when LAPACK does not converge, like numpy.
    """
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.dtype.type not in _ROUTINES:
        raise ValueError(f"lapack.eigvalsh takes a square float32/float64 matrix, got {a.dtype} {a.shape}")
    routine, real = _ROUTINES[a.dtype.type]
    n = a.shape[0]
    key = (a.dtype.type, n)
    with _LOCK:
        sizes = _WORKSPACE.get(key)
    if sizes is None:  # the optimal workspace (blocked reduction), asked once per size
        qw, qi = np.empty(1, dtype=a.dtype), np.empty(1, dtype=np.intc)
        _call(routine, real, n, np.empty(1, dtype=a.dtype), np.empty(1, dtype=a.dtype), qw, -1, qi, -1)  # not read
        sizes = (max(int(qw[0]), 2 * n + 1), max(int(qi[0]), 1))
        with _LOCK:
            _WORKSPACE[key] = sizes
    lwork, liwork = sizes
    work = np.array(a, dtype=a.dtype, order="C", copy=True)  # overwritten by the reduction
    w = np.empty(n, dtype=a.dtype)
    info = _call(routine, real, n, work, w, np.empty(lwork, dtype=a.dtype), lwork, np.empty(liwork, dtype=np.intc),
                 liwork)
    if info != 0:
        raise np.linalg.LinAlgError(f"{'d' if a.dtype == np.float64 else 's'}syevd failed (info={info})")
    return w
