"""Selection kernels and their plugin wrappers (Triton kernel, TensorRT plugin).

Nothing here imports TensorRT or needs a GPU at import time: the TensorRT pieces load lazily
and fail with a message naming what is missing.
"""
