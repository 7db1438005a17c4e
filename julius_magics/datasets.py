"""Synthetic fraud-like data for the tutorial, the demo, tests and benchmarks.

The tables imitate the shape of the IEEE-CIS fraud data used by the Julius
tutorial: numeric transaction features (``TransactionAmt``, ``ProductCD``,
card and address codes, counts ``C1..C6``, time deltas ``D1..D4``, anonymous
``V1..V20``) and a binary target ``isFraud`` with about 3 % positives. Fraud
depends on the features non-linearly (thresholds and interactions), so a tree
ensemble reaches a ROC AUC of roughly 0.9 while a constant guess stays at 0.5.

Files are written block by block with vectorised NumPy and pyarrow's CSV
writer, so 100 MB take a few seconds, and each block draws from its own
generator seeded from ``(seed, file, block)``: the bytes depend only on the
parameters. A small JSON manifest next to the files makes
:func:`make_fraud_data` idempotent.
"""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

__all__ = ["make_fraud_data", "fraud_block", "TARGET", "TRAIN_FILE", "TEST_FILE"]

TARGET = "isFraud"
TRAIN_FILE = "train_fraud.csv"
TEST_FILE = "test_fraud.csv"
MANIFEST_FILE = "fraud_data.json"

# Bump when the generator changes, so files written by an older version are rebuilt.
GENERATOR_VERSION = 1
ROWS_PER_BLOCK = 4000
N_V = 20
# Chosen so that about 3 % of rows are fraud (checked by tests/test_datasets.py).
FRAUD_INTERCEPT = -7.0
_FILE_IDS = {TRAIN_FILE: 1, TEST_FILE: 2}


def fraud_block(rng, n_rows):
    """Draw ``n_rows`` fraud-like transactions.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness; the block is a pure function of its state.
    n_rows : int
        Number of rows.

    Returns
    -------
    dict of str to numpy.ndarray
        Column name -> values, in file order, ending with ``isFraud`` (0/1).
    """
    n = n_rows
    product = rng.choice(5, size=n, p=[0.55, 0.2, 0.12, 0.08, 0.05])
    amount = np.round(rng.lognormal(mean=3.8 + 0.35 * product, sigma=0.9, size=n), 2)
    card1 = rng.integers(1000, 18400, size=n)
    card2 = rng.integers(100, 600, size=n)
    card3 = rng.choice([150, 185, 144, 117], size=n, p=[0.88, 0.06, 0.04, 0.02])
    card4 = rng.choice(4, size=n, p=[0.64, 0.3, 0.05, 0.01])  # network
    card5 = rng.integers(100, 240, size=n)
    card6 = rng.choice(2, size=n, p=[0.75, 0.25])  # debit / credit
    addr1 = rng.integers(100, 540, size=n)
    addr2 = rng.choice([87, 60, 96], size=n, p=[0.9, 0.06, 0.04])
    dist1 = np.round(rng.exponential(40.0, size=n), 1)
    counts = rng.poisson(lam=[1.5, 1.2, 0.3, 2.0, 0.8, 3.0], size=(n, 6))
    deltas = np.round(rng.exponential([30.0, 90.0, 10.0, 60.0], size=(n, 4)), 1)
    v = np.round(rng.normal(size=(n, N_V)), 3)

    # Why these terms: thresholds and interactions that trees pick up easily
    # and a linear model only partly, as in real fraud data.
    logit = (
        FRAUD_INTERCEPT
        + 1.6 * (np.log1p(amount) - 4.0)
        + 2.0 * (product == 3)
        + 1.8 * (card6 == 1) * (card4 >= 2)
        + 2.2 * (counts[:, 0] >= 4)
        + 1.8 * (deltas[:, 0] < 3.0)
        + 2.5 * (v[:, 0] > 1.0) * (v[:, 1] > 0.0)
        + 1.5 * np.tanh(v[:, 2] * v[:, 3])
        + 1.2 * v[:, 4]
        + 1.5 * (dist1 > 150.0)
        + 1.2 * (addr2 != 87)
    )
    is_fraud = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)

    columns = {
        "TransactionAmt": amount,
        "ProductCD": product,
        "card1": card1,
        "card2": card2,
        "card3": card3,
        "card4": card4,
        "card5": card5,
        "card6": card6,
        "addr1": addr1,
        "addr2": addr2,
        "dist1": dist1,
    }
    columns.update({f"C{i + 1}": counts[:, i] for i in range(counts.shape[1])})
    columns.update({f"D{i + 1}": deltas[:, i] for i in range(deltas.shape[1])})
    columns.update({f"V{i + 1}": v[:, i] for i in range(N_V)})
    columns[TARGET] = is_fraud
    return columns


def _write_csv(path, file_id, size_mb, seed):
    """Write blocks of rows to ``path`` until it holds at least ``size_mb`` MB."""
    target_bytes = int(size_mb * 1_000_000)
    tmp = path + ".tmp"
    block = 0
    with pa.OSFile(tmp, "wb") as sink:
        writer = None
        while sink.tell() < target_bytes:
            rng = np.random.default_rng([seed, file_id, block])
            table = pa.table(fraud_block(rng, ROWS_PER_BLOCK))
            if writer is None:
                writer = pacsv.CSVWriter(sink, table.schema)
            writer.write_table(table)
            block += 1
        if writer is not None:
            writer.close()
    os.replace(tmp, path)


def make_fraud_data(directory, train_mb=30, test_mb=10, seed=0):
    """Write a fraud-like training and test CSV file into ``directory``.

    The defaults give at least 4 chunks for ``DDataFrame(train,
    blocksize="5 MB")`` and for ``DDataFrame(test, blocksize="2.5 MB")``.
    When the files already exist with the same parameters they are kept as
    they are (the call takes milliseconds).

    Parameters
    ----------
    directory : str or os.PathLike
        Folder for the files; created if missing.
    train_mb, test_mb : float
        Approximate sizes in MB (10**6 bytes); each file is written in blocks
        of 4000 rows (about 1 MB), until it reaches at least this size.
    seed : int
        The files are a pure function of ``(seed, train_mb, test_mb)``.

    Returns
    -------
    (str, str)
        Paths of the training file (``train_fraud.csv``) and the test file
        (``test_fraud.csv``).

    Examples
    --------
    >>> train, test = make_fraud_data("data")          # doctest: +SKIP
    >>> pd.read_csv(train)["isFraud"].mean()           # doctest: +SKIP
    0.03...
    """
    for name, value in (("train_mb", train_mb), ("test_mb", test_mb)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"make_fraud_data: {name} must be a positive number of MB, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"make_fraud_data: seed must be a non-negative integer, got {seed!r}")

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    paths = {name: os.path.join(directory, name) for name in (TRAIN_FILE, TEST_FILE)}
    params = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "train_mb": train_mb,
        "test_mb": test_mb,
    }
    manifest_path = os.path.join(directory, MANIFEST_FILE)
    if _is_up_to_date(manifest_path, params, paths):
        return paths[TRAIN_FILE], paths[TEST_FILE]

    for name, size_mb in ((TRAIN_FILE, train_mb), (TEST_FILE, test_mb)):
        _write_csv(paths[name], _FILE_IDS[name], size_mb, int(seed))
    manifest = dict(params, sizes={name: os.path.getsize(p) for name, p in paths.items()})
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    return paths[TRAIN_FILE], paths[TEST_FILE]


def _is_up_to_date(manifest_path, params, paths):
    """True when the manifest records ``params`` and both files have the recorded sizes."""
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    sizes = manifest.pop("sizes", {})
    if manifest != params:
        return False
    return all(os.path.exists(p) and os.path.getsize(p) == sizes.get(name) for name, p in paths.items())
