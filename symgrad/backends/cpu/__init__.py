"""The CPU backend: Numba @njit kernels, NumPy/BLAS products, float64/float32 math helpers."""
