"""service: how the model is served (serving.md).

HTTP in (`service.api`), a queue in the middle (`service.queue`: in-process or Redis Streams), a model
worker out (`service.worker`). The API process imports no torch: only `service.worker` (and the
embedded composition in `service.main`) loads a backend.
"""
