"""The keys of every message that travels between the ServerApp and the ClientApps.

One module owns them so that server, client, strategy wrappers and tests agree.

A train or evaluate message from the server carries::

    ARRAYS  ArrayRecord  the shared model: trunk and consortium heads (state-dict keys)
    CONFIG  ConfigRecord round settings (see the CFG_* keys)

A reply from a site carries exactly one ArrayRecord (train only), exactly one MetricRecord
whose keys are the same at every site (Flower's strategies require it), and a ConfigRecord
REPORT with the site's per-task metrics as JSON. Nothing per-compound ever travels.

With ``evaluate-in-train`` a train message asks the site to evaluate the received model first
(CFG_EVALUATE_FIRST, for round CFG_EVALUATE_ROUND); the train reply then also carries that
evaluation as EVAL_METRICS (a ConfigRecord: Flower's strategies allow one MetricRecord) and
EVAL_REPORT, exactly what an evaluate reply would hold. The server splits them off before
aggregating.
"""

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
REPORT = "report"

# MetricRecord keys (identical at every site).
NUM_TRAIN_LABELS = "num-train-labels"  # the weight of a site's update (FedAvg weighting)
TRAIN_LOSS = "train-loss"
VALID_LOSS = "valid-loss"
TEST_LOSS = "test-loss"
NUM_EVAL_LABELS = "num-eval-labels"

# ConfigRecord keys sent by the server.
CFG_ROUND = "server-round"  # Flower's own key, injected by its strategies
CFG_FEDERATION_ID = "federation-id"
CFG_LOCAL_EPOCHS = "local-epochs"
CFG_LR = "lr"
CFG_FINAL = "final-round"
CFG_PROXIMAL_MU = "proximal-mu"  # Flower's FedProx injects this key
CFG_EVALUATE_FIRST = "evaluate-first"
CFG_EVALUATE_ROUND = "evaluate-round"
CFG_ARRAY_NAMES = "array-names"  # secure aggregation: JSON list, the order of the legacy parameter list
# int8 downloads (fedmol.transport.encode_download_delta): the checksum (`model_tag`) of the copy the
# message's int8 changes apply to (absent when the model travels whole), and of the copy they make.
CFG_DOWNLOAD_BASE = "download-base"
CFG_DOWNLOAD_TAG = "download-tag"

# Extra records of a train reply that carries an evaluation (evaluate-in-train).
EVAL_METRICS = "eval-metrics"
EVAL_REPORT = "eval-report"

# REPORT keys sent by a site.
REP_SITE = "site"
REP_TASK_METRICS = "task-metrics"  # JSON: {"valid": {task: {metric: value}}, "test": {...}}
REP_SUMMARY = "summary"  # JSON: counts and means, no per-compound value
REP_KEY_FINGERPRINT = "key-fingerprint"
REP_REFERENCE_HASH = "reference-hash"
REP_N_BITS = "n-bits"
REP_PREP_SETTINGS = "prep-settings"  # JSON: standardisation and featurisation settings (no key)

# Prefixes of model state-dict keys.
TRUNK_PREFIX = "trunk."
HEADS_PREFIX = "heads."
