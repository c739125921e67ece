"""The CUDA backend: @cuda.jit kernels over the same kernel IR; device discovery; device math helpers."""
