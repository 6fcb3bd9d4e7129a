"""Deployable flows: each module composes tasks and holds no business logic."""

import os

# Before Prefect is imported: there is no network, and analytics would log errors otherwise.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
