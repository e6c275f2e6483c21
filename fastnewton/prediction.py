"""``fastnewton.predict``: the model's output h(Cx) at a solution, with the model's own kernels."""
import numpy as np

from .models import RowBlock, build_model, uses_values
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
    V = as_value_matrix(V, model, matrix.n, uses_values(model))
    # The output does not depend on the target; a model with a value matrix is built with a zero one.
    row_model = build_model(model, None if V is None else np.zeros(V.shape[1]))
    return row_model.predict(RowBlock(matrix, None, None, V), matrix.matvec(x))
