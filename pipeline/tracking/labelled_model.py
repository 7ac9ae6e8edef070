"""The served classifier: the network's class probabilities and the predicted class name.

This file is MLflow "models from code": :func:`pipeline.tracking.models.log_model` stores it
with every classifier it logs, and ``mlflow.pyfunc.load_model`` / ``mlflow models serve`` run it
to build the model. It imports nothing of the project, so the model serves without it. The
network itself is the ``pt2`` (torch.export) PyTorch model stored beside this file as the
artifact ``network``, loaded by MLflow's own PyTorch flavor, which refuses an archive with a
pickle payload while ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is false. Nothing is unpickled.

Input: raw float32 values ``[N, *input_shape]`` (pixels 0-255 or raw features), as before.
Output: a table, one row per input: ``label`` (the predicted class name), then one column per
class name with its probability (the names the signature always gave the probability columns).
"""

from __future__ import annotations

from typing import Any

import mlflow.pytorch
import numpy as np
import pandas as pd
import torch
from mlflow.models import Model, set_model
from mlflow.pyfunc import PythonModel

NETWORK = "network"  # the artifact: the pt2 PyTorch MLflow model
LABEL = "label"  # the output column with the predicted class name


class LabelledClassifier(PythonModel):
    """Probabilities from the pt2 network, and the name of the most probable class."""

    # MLflow would read predict's type hints as the model's schema (and warns either way); the
    # signature logged with the model is the schema.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        path = context.artifacts[NETWORK]
        self.network = mlflow.pytorch.load_model(path)
        self.classes = [str(c) for c in (Model.load(path).metadata or {})["class_names"]]

    # ``model_input`` has no type hint on purpose: MLflow would try to read a schema from it
    # when the model is logged, and warn that it cannot.
    def predict(self, context: Any, model_input, params: Any = None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            model_input = model_input.to_numpy()
        x = np.ascontiguousarray(model_input, dtype=np.float32)
        with torch.no_grad():
            proba = self.network(torch.from_numpy(x)).numpy()
        table = pd.DataFrame(proba, columns=self.classes)
        table.insert(0, LABEL, [self.classes[int(k)] for k in proba.argmax(axis=1)])
        return table


# MLflow runs this file under a module name of its own; the project imports it only to find it.
if __name__ != "pipeline.tracking.labelled_model":
    set_model(LabelledClassifier())
