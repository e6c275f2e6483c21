"""Numba kernels of fastnewton: plain arrays in, plain arrays out.

This folder is installed as ``fastnewton.kernels`` (see pyproject.toml); it never
installs as a top-level ``kernels`` package. Every kernel is ``@njit(cache=True)``;
the ones that stream C or length-n vectors are ``parallel=True`` with reductions
over fixed-size row chunks summed in chunk order, so the thread count does not
change the bits of any result.
"""
