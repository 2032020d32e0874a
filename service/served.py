"""The models one API serves (serving.md "Models"): name -> artifact directory and spec, the default first.

Built once per app from `ServiceSettings.model_dirs` (RSD_MODELS, else RSD_MODEL). The API reads only
each artifact's spec.json (the tiles that price a job, the scale that bounds its output); the workers
load the weights. `pick` is the one check of a request's `model`: an unknown name is a 422 naming the
known ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rsd.spec import ModelSpec, read_spec
from service.schemas import ApiError, ModelInfo
from service.settings import ServiceSettings


@dataclass(frozen=True)
class ServedModel:
    name: str
    directory: Path
    spec: ModelSpec


class ServedModels:
    """The table of an API's models, in RSD_MODELS order (the first is the default)."""

    def __init__(self, models: list[ServedModel]) -> None:
        if not models:
            raise ValueError("no model to serve")
        self._models = {model.name: model for model in models}
        self.default = models[0]

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> ServedModels:
        return cls([ServedModel(name, path, read_spec(path)) for name, path in settings.model_dirs.items()])

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def pick(self, name: str | None) -> ServedModel:
        """The model a request names (None: the default); ApiError 422 for a name not served here."""
        if name is None:
            return self.default
        model = self._models.get(name)
        if model is None:
            raise ApiError("invalid_parameters", f"model {name!r} is not served here; known: {', '.join(self.names)}")
        return model

    def infos(self) -> list[ModelInfo]:
        return [ModelInfo.from_spec(m.name, m.spec, m is self.default) for m in self._models.values()]
