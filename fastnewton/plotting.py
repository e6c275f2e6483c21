"""``fastnewton.plot_history``: a solve's convergence at a glance (matplotlib, an optional dependency)."""


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot_history needs matplotlib: pip install matplotlib "
                          "(or pip install 'fastnewton[bench]')") from None
    return plt


def plot_history(res, axes=None, x="time", label=None):
    """Plot ‖∇L‖/g_ref and L(x) − min L per iteration of ``res`` (a ``solve`` result) on log scales.

    ``x="time"`` (seconds since the call started) or ``"iter"``. ``axes``: two matplotlib Axes
    to draw on (e.g. to overlay several solves, with ``label``); by default a new figure.
    Returns the figure.
    """
    if x not in ("time", "iter"):
        raise ValueError(f"x must be 'time' or 'iter', got {x!r}")
    history = res["history"]
    if not history:
        raise ValueError("res.history is empty: the solve stopped before its first record")
    plt = _pyplot()
    if axes is None:
        figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    else:
        figure = axes[0].figure
    xs = [record[x] for record in history]
    rel = [max(record["rel_grad_norm"], 1e-300) for record in history]
    best = min(record["loss"] for record in history)
    gaps = [record["loss"] - best for record in history]
    label = label or f"{res.get('hessian', '')} ({res['n_iter']} iterations)"
    axes[0].semilogy(xs, rel, marker="o", label=label)
    axes[0].set_ylabel("‖∇L(x)‖ / g_ref")
    axes[1].semilogy(xs[:-1] or xs, [max(g, 1e-300) for g in gaps[:-1]] or gaps, marker="o", label=label)
    axes[1].set_ylabel("L(x) − L(final x)")
    for ax in axes:
        ax.set_xlabel("seconds since the call started" if x == "time" else "Newton iteration")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_title("relative gradient norm (the stopping test)")
    axes[1].set_title("loss above the final loss")
    return figure
