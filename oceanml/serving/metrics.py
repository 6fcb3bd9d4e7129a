"""The endpoint's Prometheus metrics, on a registry of its own (one per app).

Latency percentiles come from the histogram, e.g. p99 per model over five minutes:
``histogram_quantile(0.99, sum by (le, model) (rate(oceanml_request_latency_seconds_bucket[5m])))``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("oceanml_requests", "Prediction requests answered.",
                                ["model", "status"], registry=r)
        self.latency = Histogram("oceanml_request_latency_seconds",
                                 "Prediction request latency, arrival to answer.",
                                 ["model", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("oceanml_batch_size", "Images per forward pass.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.version = Gauge("oceanml_model_version", "Registry version being served.",
                             ["model"], registry=r)
        self.loaded_at = Gauge("oceanml_model_loaded_timestamp_seconds",
                               "When the served version was loaded (Unix time).", ["model"],
                               registry=r)
        self.logged = Counter("oceanml_prediction_log_written", "Online predictions recorded.",
                              registry=r)
        self.dropped = Counter("oceanml_prediction_log_dropped",
                               "Online predictions not recorded (queue full or DB down).",
                               registry=r)

        self.answers = Counter("oceanml_answers",
                               "Answers by model, version, role (champion, canary or shadow, "
                               "beside a release) and outcome (ok, error).",
                               ["model", "version", "role", "outcome"], registry=r)
        self.answer_latency = Histogram("oceanml_answer_latency_seconds",
                                        "Answer latency by model, version and role: arrival to "
                                        "answer (a shadow's: queued to answered, off the "
                                        "response path).", ["model", "version", "role"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.shadow_skipped = Counter("oceanml_shadow_skipped",
                                      "Shadow predictions skipped: requests left no idle moment "
                                      "before the background queue filled.", ["model"],
                                      registry=r)

        self.refused = Counter("oceanml_requests_refused",
                               "Requests refused before any work, by key name (none, unknown "
                               "or the key's) and reason (unauthorized, forbidden, "
                               "rate_limited).", ["key", "reason"], registry=r)

        self.body_bytes = Gauge("oceanml_body_bytes_in_flight",
                                "Bytes of request bodies held now (against the body budget).",
                                registry=r)

    def answered(self, name: str, version: str, role: str, outcome: str,
                 latency_s: float) -> None:
        self.answers.labels(name, version, role, outcome).inc()
        self.answer_latency.labels(name, version, role).observe(latency_s)

    def swapped(self, name: str, version: str, loaded_at: float) -> None:
        self.version.labels(name).set(float(version))
        self.loaded_at.labels(name).set(loaded_at)
