"""The online endpoint: the champion of each served model answers HTTP requests.

:mod:`.inputs` reads and checks request bodies, :mod:`.champions` keeps one loaded
:class:`~models.predictor.Predictor` per model and follows the registry, :mod:`.candidates`
loads the candidate of an open release beside it (canary or shadow), :mod:`.batcher` runs
requests that arrive together as one forward pass, :mod:`.prediction_log` writes what was
answered to the ``predictions`` table off the request path, :mod:`.metrics` is the Prometheus
view, :mod:`.service` holds them for one replica, and :mod:`.app` ties them into the
FastAPI application ``oceanml serve`` runs.
"""
