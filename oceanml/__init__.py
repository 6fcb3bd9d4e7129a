"""OceanML: the ML lifecycle of an ocean-monitoring network as Prefect flows.

Shared infrastructure lives here (settings, database, lake, LLM providers, CLI);
the stages live in ``tasks/``, the flows in ``flows/`` and the model zoo in ``models/``.
"""

__version__ = "0.1.0"
