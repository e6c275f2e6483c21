"""``fastnewton.predict``: the model's output h(Cx) at a solution, with the package's own kernels."""
import numpy as np

from .chunking import chunk_rows
from .kernels.dense import dense_rmatmat
from .kernels.softmax import softmax_into
from .validation import as_input_matrix, as_value_matrix, as_vector, check_model


def predict(C, x, model="softmax", V=None):
    """h(Cx): softmax(Cx), softmax(ReLU(Cx)) (length n) or ReLU(Vᵀ softmax(Cx)) (length m).

    ``C`` and ``V`` are accepted in the same forms as by ``solve`` (C may be a new matrix
    with the same d columns, e.g. held-out rows); ``x`` has length d. Compare the result
    with b: ``np.linalg.norm(fastnewton.predict(C, res.x) - b)``.
    """
    model = check_model(model)
    matrix = as_input_matrix(C)
    x = as_vector(x, "x", matrix.d, " (columns of C)")
    V = as_value_matrix(V, model, matrix.n)
    u = matrix.matvec(x)
    s = np.empty(matrix.n)
    softmax_into(u, model == "relu_softmax", chunk_rows(matrix.n), s)
    if V is None:
        return s
    y = np.empty((V.shape[1], 1))
    dense_rmatmat(V, s[:, None], chunk_rows(matrix.n), y)
    return np.maximum(y[:, 0], 0.0)
