"""Hessian strategies: each maps (problem, evaluation, timer) to the d × d matrix the Newton step factors.

``exact``: H = Cᵀ diag(β) C + P S Pᵀ + λI, the sparse sandwich in O(Σᵢ nnzᵢ²) (dense: a
blocked GEMM, O(n d²)). ``auto`` resolves to a strategy from the shape of the problem.
"""

STRATEGIES = ("auto", "exact")


def exact_hessian(problem, evaluation, timer):
    return problem._hessian(evaluation)


def resolve_strategy(name, problem):
    """(resolved name, strategy function). Only ``exact`` exists so far, so ``auto`` means exact."""
    if name not in STRATEGIES:
        raise ValueError(f"hessian must be one of {', '.join(repr(s) for s in STRATEGIES)}, got {name!r}")
    return "exact", exact_hessian
