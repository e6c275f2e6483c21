"""Scale out: the Newton solver on a Dask ``distributed`` cluster, with C partitioned by rows.

    from distributed import Client, LocalCluster
    import dask.array as da, fastnewton, fastnewton.dask

    client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
    C, b, _ = fastnewton.make_problem(200_000, 50, nnz_per_row=10, seed=0)
    res = fastnewton.dask.solve(da.from_array(C, chunks=(50_000, 50), asarray=False), b)

Needs the ``dask`` extra (``pip install "fastnewton[dask]"``).
"""
from .rounds import ClusterError
from .solver import solve

__all__ = ["ClusterError", "solve"]
