"""fedmol: federated multi-task molecular property models, installed under this one import name.

The core here is what every side shares and sits at the bottom of the layers:
``config`` (`FederationConfig`, the run config), ``wire`` (the keys of every message), ``records``
(ArrayRecord/metric conversion), ``errors``, ``jsonio``. ``cli`` is the `fedmol` command: it sits
above every area and registers their commands.

The areas, bottom up (each maps a top-level folder of the repository, see pyproject.toml):
``fedmol.datasets`` → ``fedmol.models`` → ``fedmol.client`` | ``fedmol.server`` | ``fedmol.scoring``
(siblings never import each other) → ``fedmol.deploy``.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
