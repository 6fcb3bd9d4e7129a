"""The core infrastructure every layer above stands on: settings, the metadata database and
its migrations, the lake and landing stores, the model registry, training jobs, LLM
providers, DVC versioning, params.yaml, progress and logging.

It imports nothing of OceanML's above it (models, tasks, flows, entry points): the layers
contract in pyproject.toml says so and ``make lint`` checks it.
"""
