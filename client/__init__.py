"""The site's node: what runs at a company or institute and takes part in federations.

Modules (import them directly; nothing is imported here):

- `fedmol.client.site`: `SiteNode`, a site's side of a federation free of Flower (its store, the
  private heads on disk, train/evaluate/fine-tune rounds, the outbox ledger)
- `fedmol.client.site_registry`: the site's own full model, registered in its own MLflow registry at
  the end of a federation (node config ``tracking-uri``, ``model-name``, ``register-model``)
- `fedmol.client.local_only`: the site's local-only model for the federation-gain report, trained at its
  first evaluation and cached in its store (``local_only/<key>/``, key: store content + recipe)
- `fedmol.client.client_app`: the Flower ClientApp (decode the message, let the site work, encode the reply)
- `fedmol.client.worker`: the site runtime, ``fedmol site worker`` (runs the ClientApp warm for its SuperNode)
- `fedmol.client.supernode`: ``fedmol-supernode``, Flower's SuperNode with a shorter idle wait
- `fedmol.client.cli`: ``fedmol site ...`` (``ledger``, ``worker``)
"""
