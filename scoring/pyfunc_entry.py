"""MLflow "models from code" entry: MLflow runs this file to build the pyfunc at load time,
so nothing is pickled into the registered model."""

import mlflow.models

from fedmol.scoring.pyfunc import FedmolPyfunc

mlflow.models.set_model(FedmolPyfunc())
