"""The models, one module each, and their registry (see ``fastnewton.models.base`` for the interface).

``register_model(name, factory, uses_values=False, replace=False, distributions=False)`` adds a model to
``solve``, ``Problem`` and ``fastnewton.dask.solve``; ``build_model(name, target)`` makes one.
"""
from .base import (
    LogPartition,
    Model,
    RowBlock,
    Stage,
    add_summaries,
    build_model,
    check_model,
    model_names,
    outputs_distributions,
    register_model,
    uses_values,
)
from .softmax import Softmax
from .softmax_relu import SoftmaxRelu

register_model("softmax", lambda target: Softmax(relu=False), distributions=True)
register_model("relu_softmax", lambda target: Softmax(relu=True), distributions=True)
register_model("softmax_relu", SoftmaxRelu, uses_values=True)

__all__ = ["LogPartition", "Model", "RowBlock", "Stage", "Softmax", "SoftmaxRelu", "add_summaries",
           "build_model", "check_model", "model_names", "outputs_distributions", "register_model", "uses_values"]
