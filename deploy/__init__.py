"""Deployment: how a consortium's processes are started, on one machine or on real hosts.

Modules (import them directly; nothing is imported here):

- `fedmol.deploy.pki`: the consortium's credentials (CA, the SuperLink's TLS certificate, site key pairs)
- `fedmol.deploy.launcher`: Flower processes on loopback (SuperLink, SuperNodes), the code-free
  Flower app that runs submit (`write_flower_app`: one pyproject.toml, no code), and their shutdown
- `fedmol.deploy.consortium`: a whole consortium on one machine as separate processes (TLS,
  SuperNode authentication, an ``mlflow server``, one SuperNode and site runtime per store)
- `fedmol.deploy.consortium_cli`: ``fedmol consortium init | add-site | up | admit | sites | run | status``
- `fedmol.deploy.demo`: ``fedmol demo``, a small consortium from the data that ships with fedmol
- `fedmol.deploy.report`: the federation-gain table printed at the end of a federation
- `fedmol.deploy.cli`: ``fedmol demo``, ``fedmol simulate`` and the ``fedmol consortium`` group

Files: ``systemd/`` and ``compose/`` (service templates), ``README.md`` (the exact commands).
"""
