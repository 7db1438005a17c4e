"""The tutorial pipeline: fraud detection by bagged tree models and a map-reduce.

This module is the one definition of the pipeline that the notebook
``notebooks/fraud_tracking.ipynb``, ``julius demo``, the tests and the
benchmarks run. It holds the text of the notebook's ``%%remote_eval`` and
``%%addrules ml`` cells (:data:`REMOTE_SOURCE`, :data:`RULES_SOURCE`) and
:func:`run_pipeline`, which sends them through a session and computes the
score.

The pipeline, after the Julius persist tutorial:

1. the training file is read in chunks of 5 MB, the test file in chunks of
   2.5 MB (``DDataFrame(...).chunks``);
2. each training chunk is downsampled (every fraud row, 5 % of the others) and
   an extra-trees classifier is trained on it (``classifiertrain``: the key
   jobs);
3. for each test chunk (the map step) the predictions of all the models are
   averaged and paired with the true labels, one pair per product code;
4. the pairs are shuffled into 4 buckets by product code, each bucket
   reduced to a list, the lists concatenated (``remote.concat_pairs``);
5. ``ml:score`` is the ROC AUC of the concatenated predictions.
"""

from .datasets import TARGET
from .rules import DDataFrame, ref, remote

__all__ = [
    "REMOTE_SOURCE",
    "RULES_SOURCE",
    "RULES_NAMESPACE",
    "MODEL",
    "OPTIONS",
    "TRAIN_BLOCKSIZE",
    "TEST_BLOCKSIZE",
    "KEY_RULES",
    "pipeline_refs",
    "run_pipeline",
]

#: The ``%%remote_eval`` cell: helpers every worker needs (``remote.NAME`` in rules).
REMOTE_SOURCE = '''\
import pandas as pd


def downsample(ycol, frac, df):
    """Every positive row of ``df`` and a random fraction ``frac`` of the negative ones."""
    # No seed: julius seeds every node from its id, so the sample is reproducible.
    return pd.concat([df[df[ycol] == 1], df[df[ycol] == 0].sample(frac=frac)])


def first(pair):
    return pair[0]


def average_proba(*preds):
    """Mean of the ``proba`` columns of several predictions of the same rows."""
    mean = sum(p["proba"].to_numpy() for p in preds) / len(preds)
    return pd.DataFrame({"proba": mean}, index=preds[0].index)


def product_pairs(ycol, keycol, pred, df):
    """Pair a test chunk's predictions with its labels: [(product code, DataFrame[proba, y]), ...]."""
    frame = pd.DataFrame({"proba": pred["proba"].to_numpy(), "y": df[ycol].to_numpy()})
    keys = df[keycol].to_numpy()
    return [(int(k), frame[keys == k].reset_index(drop=True)) for k in sorted(set(keys))]


def concat_pairs(*buckets):
    """Concatenate the DataFrames of all pairs of all buckets, ordered by key."""
    pairs = sorted((pair for bucket in buckets for pair in bucket), key=first)  # stable sort
    return pd.concat([frame for _, frame in pairs], ignore_index=True)
'''

#: Namespace of the tutorial's rules (``%%addrules ml``).
RULES_NAMESPACE = "ml"

#: The ``%%addrules ml`` cell.
RULES_SOURCE = '''\
def downsample(src, target, frac):
    return ApplyFn(remote.downsample, target, frac)(src)


def features(src, target):
    return ApplyFn(lambda df: df.drop(columns=[target]))(src)


def labels(src, target):
    return ApplyFn(lambda df: df[[target]])(src)


def classifiertrain(model, options, x, y):
    return Train(model, options)(x, y)


def classify(train_data, target, model, options, testx):
    x = features(train_data, target)
    trained = classifiertrain(model, options, x, labels(train_data, target))
    return Predict()(trained, testx)


def bagpred(test_chunk, train_chunks, target, model, options):
    """Average prediction, on one test chunk, of models trained on downsampled training chunks."""
    testx = features(test_chunk, target)
    preds = [classify(downsample(c, target, 0.05), target, model, options, testx) for c in train_chunks]
    return ApplyFn(remote.average_proba)(*preds)


def predpairs(test_chunk, train_chunks, target, model, options):
    """The map step: a test chunk's (product code, DataFrame[proba, y]) pairs."""
    pred = bagpred(test_chunk, train_chunks, target, model, options)
    return ApplyFn(remote.product_pairs, target, "ProductCD")(pred, test_chunk)


def column(src, name):
    return ApplyFn(lambda df: df[name])(src)


def score(scored):
    """ROC AUC of a DataFrame with columns ``y`` and ``proba``."""
    return Score()(column(scored, "y"), column(scored, "proba"))
'''

MODEL = "sklearn.ensemble.ExtraTreesClassifier"
OPTIONS = {"n_estimators": 50, "min_samples_leaf": 5}
TRAIN_BLOCKSIZE = "5 MB"
TEST_BLOCKSIZE = "2.5 MB"
#: Rules whose nodes are dispatched as Dask tasks (their sub-graphs run inside them).
KEY_RULES = frozenset({"classifiertrain"})
N_BUCKETS = 4


def pipeline_refs(train_path, test_path, model=MODEL, options=None, target=TARGET,
                  train_blocksize=TRAIN_BLOCKSIZE, test_blocksize=TEST_BLOCKSIZE):
    """Node references of the tutorial pipeline (nothing runs).

    Parameters
    ----------
    train_path, test_path : str
        CSV files, as written by :func:`julius_magics.datasets.make_fraud_data`.
    model : str
        Import path of a scikit-learn classifier.
    options : dict, optional
        Its keyword arguments; default :data:`OPTIONS`.
    target : str
        The 0/1 label column.
    train_blocksize, test_blocksize : str
        Chunk sizes of the two files.

    Returns
    -------
    dict
        ``train_chunks``, ``test_chunks``, ``downsampled`` (one per training
        chunk), ``scored`` (the map-reduce result: DataFrame[proba, y]) and
        ``score`` (the ROC AUC), all node references.
    """
    options = dict(OPTIONS if options is None else options)
    train_chunks = DDataFrame(train_path, blocksize=train_blocksize).chunks
    test_chunks = DDataFrame(test_path, blocksize=test_blocksize).chunks
    scored = ref.mr.mapreduce(
        test_chunks,
        ref.ml.predpairs(train_chunks, target, model, options),
        ref.mr.shuffler(remote.first, N_BUCKETS),
        ref.mr.reducer(list),
        remote.concat_pairs,
    )
    return {
        "train_chunks": train_chunks,
        "test_chunks": test_chunks,
        "downsampled": [ref.ml.downsample(c, target, 0.05) for c in train_chunks],
        "scored": scored,
        "score": ref.ml.score(scored, label="AUC"),
    }


def run_pipeline(session, train_path, test_path, model=MODEL, options=None, target=TARGET,
                 train_blocksize=TRAIN_BLOCKSIZE, test_blocksize=TEST_BLOCKSIZE, key_rules=KEY_RULES):
    """Send the tutorial's remote code and rules through ``session`` and compute the score.

    Parameters
    ----------
    session : julius_magics session
        A started (or connected) session, e.g. ``julius_magics.get_session()``.
    train_path, test_path, model, options, target, train_blocksize, test_blocksize
        As for :func:`pipeline_refs`.
    key_rules : set of str
        Rules whose nodes become Dask tasks; default :data:`KEY_RULES`.

    Returns
    -------
    dict
        The references of :func:`pipeline_refs` plus ``auc`` (float), the
        computed score.
    """
    session.remote_eval(REMOTE_SOURCE)
    session.add_rules(RULES_NAMESPACE, RULES_SOURCE)
    refs = pipeline_refs(train_path, test_path, model, options, target, train_blocksize, test_blocksize)
    auc = session.compute(refs["score"], key_rules=set(key_rules))
    return dict(refs, auc=float(auc))
