"""fedmol models: the sparse-input multi-task network (shared trunk, consortium and private heads),
its losses, metrics, uncertainty, training loop and checkpoint format, and the local-only and pooled
baselines a federation is compared with.

Modules (import them directly; this package imports nothing heavy so ``fedmol --help`` stays fast):

- `fedmol.models.spec`: `HeadSpec`, `ModelSpec`, `build_spec` (plain JSON-serialisable hyper-parameters)
- `fedmol.models.network`: `MultiTaskNet` (``trunk.*`` / ``heads.<name>.*`` state; shared vs private parts)
- `fedmol.models.data`: `SparseBatch`, `TaskData.from_store`, `iter_batches`
- `fedmol.models.losses`: `masked_bce`, `censored_mse`
- `fedmol.models.training`: `TrainConfig`, `train_epochs`, `evaluate`, `predict` (MC dropout too), `resolve_device`
- `fedmol.models.metrics`: per-task ROC-AUC, AUC-PR, Brier, ECE, RMSE, R², Pearson r, and summaries
- `fedmol.models.uncertainty`: split-conformal calibration (`calibrate`, p-values, intervals)
- `fedmol.models.io`: `save_model`/`load_model` (``spec.json`` + ``weights.pt`` + ``meta.json``)
- `fedmol.models.registry`: a model folder as an MLflow pyfunc and a registry version (server and sites)
- `fedmol.models.site_model`: a site's full model in a federation (shared part + private heads in its store)
- `fedmol.models.report`: `GainTable`, the local / federated / personalised / pooled comparison, pairs won, plot
- `fedmol.models.baselines`: local-only (`local_only`: a site's own model, recipe chosen on its validation
  fold) and pooled baselines on the same sites, folds and model shape
- `fedmol.models.cli`: ``fedmol train``
"""
