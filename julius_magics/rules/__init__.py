"""The rule language: node references, namespaces, atoms, expansion. Pure Python, no Dask."""

from .atoms import Alias, ApplyFn, Atom, Predict, Score, Train
from .builtins import DDataFrame
from .evaluate import evaluate
from .graph import JobPlan, expand, plan_jobs
from .node import NodeRef, Not, RemoteName, remote, stable_hash
from .registry import RULES, RuleBook, ref
from .seeding import rng

__all__ = ["Alias", "ApplyFn", "Atom", "Predict", "Score", "Train", "DDataFrame", "evaluate", "rng",
           "JobPlan", "expand", "plan_jobs", "NodeRef", "Not", "RemoteName", "remote", "stable_hash",
           "RULES", "RuleBook", "ref"]
