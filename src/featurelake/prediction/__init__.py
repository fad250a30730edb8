"""Batch prediction: score a view's feature snapshot with a registered model into an Iceberg table.

Public API::

    fl = featurelake.open(".")
    result = fl.predict("activity", view="user_features")         # NAME = its Production version
    model = load_model(fl.models, fl.models.resolve("activity@1.0.0"))  # a ModelFlavor, digest-verified
    model.predict(matrix)                                          # (n, k) in signature order -> (n,)

Flavors (``pickle``, ``onnx``, ``torchscript``) implement :class:`ModelFlavor`; the job lives in
``featurelake.jobs.batch_predict``. See docs/prediction.md.
"""

from featurelake.prediction.flavors import (
    AVAILABLE_FLAVORS,
    ModelFlavor,
    ModelInfo,
    ModelInput,
    ModelPayload,
    load_flavor,
    load_model,
    model_info,
    model_payload,
)

__all__ = [
    "AVAILABLE_FLAVORS",
    "ModelFlavor",
    "ModelInfo",
    "ModelInput",
    "ModelPayload",
    "load_flavor",
    "load_model",
    "model_info",
    "model_payload",
]
