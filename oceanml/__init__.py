"""OceanML's entry points: the ``oceanml`` CLI, the online endpoint (``serving/``), ``doctor``
and the simulator. They sit above the flows, the stages (``tasks/``), the model code
(``models/``) and the core infrastructure (``core/``), and only import downwards.
"""

__version__ = "0.1.0"
