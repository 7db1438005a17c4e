"""Reading recordings for people: details of one, differences between two.

Only the JSON parts are read (nothing is unpickled), so these work on any
recording whose bytes and signatures verify, whoever signed it; they say who
signed and whether you trust that key. Every document was validated against
its schema (:mod:`.schema`) when the recording was opened.
"""

from __future__ import annotations

import difflib

from ..terminal import one_line
from . import steps
from .environment import env_diff, format_env_diff
from .pins import requirements
from .steps import recorded_environment
from .store import Store

__all__ = ["details", "diff", "recorded_environment", "format_details", "format_diff", "environment_pins"]


def _open(name, store, legacy_hmac=False):
    # read-only and pickle-free: every hash and signature is checked, and who signed is shown
    return Store.coerce(store).open(name, legacy_hmac=legacy_hmac, any_signer=True)


def signer(recording):
    """Who signed ``recording``: ``{"key_id", "by_me", "trusted", "name"}`` (``name`` from your trusted keys)."""
    from .keys import load_trusted_keys

    fp = recording.manifest["key_id"]
    names = {k.fingerprint: k.name for k in load_trusted_keys()}
    return {"key_id": fp, "by_me": recording.info.signed_by_me, "trusted": recording.trusted,
            "name": "you" if recording.info.signed_by_me else names.get(fp)}


def format_signer(who):
    """``signed by you (3f5a…)``, ``signed by alice (…), trusted``, ``signed by … (not trusted)``."""
    if who["by_me"]:
        return f"signed by you ({who['key_id']})"
    if who["trusted"]:
        return f"signed by {who['name'] or 'a trusted key'} ({who['key_id']}), trusted"
    return f"signed by {who['key_id']} (not trusted): `julius trust add THEIR.pub` to trust it"


def _results(recording):
    """``{node id or key: {"label", "fp", "describe"}}`` of every recorded result."""
    return {nid: result for step in recording.steps for nid, result in steps.results(step).items()}


def _files(recording):
    """``{path: entry}``: one entry per file version read, by whichever reader (kernel, workers,
    partitions), under the shortest path it was read by (``raw/a.csv``, not the absolute path
    that ``dd.read_csv`` expands it to)."""
    versions = {}
    for s in recording.steps:
        for f in steps.input_files(s):
            version = (f.get("abspath", f["path"]), f["sha256"])
            if version not in versions or len(f["path"]) < len(versions[version]["path"]):
                versions[version] = f
    return {f["path"]: f for f in versions.values()}


def details(name, store=None, legacy_hmac=False):
    """Details of a recording as plain JSON: info, signer, steps, environment summary, data files, results."""
    recording = _open(name, store, legacy_hmac)
    kernel, workers = recorded_environment(recording)
    env = None
    if kernel is not None:
        env = {"python": kernel.get("python", {}).get("version"), "os": kernel.get("os", {}).get("system"),
               "release": kernel.get("os", {}).get("release"), "packages": len(kernel.get("packages", {})),
               "workers": len(workers),
               "workers_same_as_kernel": all(env_diff(kernel, w)["same"] for w in workers.values())}
    return {
        "info": recording.info.as_dict(),
        "signer": signer(recording),
        "meta": recording.meta,
        "steps": [{"seq": s.seq, "kind": s.kind, "summary": steps.summary(s)} for s in recording.steps],
        "environment": env,
        "data": list(_files(recording).values()),
        "results": [{"node": k, **v} for k, v in _results(recording).items()],
        # the most workers a cluster had (cluster.scale, adapt): its first count alone misleads
        "most_workers": max((s.data.get("workers") or 0 for s in recording.steps
                             if s.kind in ("worker_joined", "worker_left")), default=None),
        # a key computed in several graphs is listed once, and compared at each by a replay
        "results_recorded": sum(len(steps.results(s)) for s in recording.steps),
        "verification": recording.verification,
    }


def format_details(details):
    """Readable text of :func:`details`."""
    info = details["info"]
    lines = [f"{info['name']}: {info['status']}, {info['steps']} steps, {info['size']:,} bytes, "
             + ("no cluster" if info["workers"] is None else f"{info['workers']} workers")
             + (f" (scaled up to {details['most_workers']})"
                if (details.get("most_workers") or 0) > (info["workers"] or 0) else "")
             + f", created {info['created']}" + (f" -- {info['note']}" if info["note"] else "")]
    if details.get("signer"):
        lines.append(format_signer(details["signer"]))
    meta = details.get("meta") or {}
    if meta.get("partial"):
        lines.append("partial (a replay will not verify): " + "; ".join(meta.get("partial_reasons") or ["see the steps"]))
    lines.append("steps:")
    lines += [f"  {s['seq']:>3} {s['kind']:<12} {s['summary']}" for s in details["steps"]]
    env = details["environment"]
    if env:
        lines.append(f"environment: Python {env['python']} on {env['os']} {env['release']}, {env['packages']} "
                     f"packages, {env['workers']} workers" + ("" if env["workers_same_as_kernel"] else
                                                              " (workers differ from the kernel)"))
    if details["data"]:
        lines.append("data:")
        lines += [f"  {f['path']}  {f['size']:,} B  sha256 {f['sha256'][:16]}  "
                  f"{'embedded' if f.get('embedded') else 'hash only'}" for f in details["data"]]
    distinct, recorded = len(details["results"]), details.get("results_recorded", len(details["results"]))
    lines.append(f"results: {recorded}" + (f" ({distinct} distinct)" if distinct != recorded else ""))
    lines += [f"  {r['label'] or r['node']}: {r['describe']}  [{r['fp'][:12]}]" for r in details["results"]]
    return "\n".join(one_line(line) for line in lines)   # each a line, whatever a recorded string holds


def _sources(recording, kind, key=None):
    texts = {}
    for s in recording.steps:
        if s.kind == kind:
            texts.setdefault(s.data.get(key, "") if key else "", []).append(s.data["source"])
    return {k: "\n".join(v) for k, v in texts.items()}


def _text_diff(a, b, name_a, name_b):
    # lines without their ends: a cell's last line has none, and would run into the next one
    return "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), name_a, name_b, lineterm=""))


def diff(name_a, name_b, store=None, legacy_hmac=False):
    """What differs between two recordings: code, rules, parameters, data, environment, results."""
    a, b = _open(name_a, store, legacy_hmac), _open(name_b, store, legacy_hmac)
    code = {}
    for kind, key in (("remote_eval", None), ("cell", None)):
        sa, sb = _sources(a, kind).get("", ""), _sources(b, kind).get("", "")
        if sa != sb:
            code[kind] = _text_diff(sa, sb, name_a, name_b)
    rules = {}
    ra, rb = _sources(a, "rules", "ns"), _sources(b, "rules", "ns")
    for ns in sorted(ra.keys() | rb.keys()):
        if ra.get(ns, "") != rb.get(ns, ""):
            rules[ns] = _text_diff(ra.get(ns, ""), rb.get(ns, ""), name_a, name_b)

    def params(rec):
        p = {}
        for s in rec.steps:
            if s.kind == "cluster":
                p.update({f"cluster.{k}": v for k, v in s.data.items() if k != "address"})
            elif s.kind == "dispatch":
                p[f"dispatch {', '.join(t['label'] or t['key'] for t in s.data['targets'])}"] = {
                    "targets": [t["id"] for t in s.data["targets"]], "key_rules": s.data["key_rules"]}
            elif s.kind == "remote_eval" and s.data.get("push"):
                p.setdefault("pushed", []).extend(s.data["push"])
        return p

    pa, pb = params(a), params(b)
    parameters = {k: [pa.get(k), pb.get(k)] for k in sorted(pa.keys() | pb.keys()) if pa.get(k) != pb.get(k)}
    data = _pair_files(_files(a), _files(b))
    (ka, _), (kb, _) = recorded_environment(a), recorded_environment(b)
    environment = env_diff(ka, kb) if ka is not None and kb is not None else {"same": ka == kb}
    results = _pair_results(_results(a), _results(b))
    differs = code or rules or parameters or results or any(not f["same_content"] for f in data)
    return {"a": name_a, "b": name_b, "code": code, "rules": rules, "parameters": parameters, "data": data,
            "environment": environment, "results": results,
            "same": not differs and environment.get("same", True)}


def _pair_files(fa, fb):
    """Input files that differ, paired by content hash first, then by path.

    Each entry is ``{"a", "b"}`` (paths, None when absent), ``{"sha_a", "sha_b"}`` and
    ``same_content``: a file read from another path with the same bytes is one entry,
    not a removal and an addition.
    """
    only_a = {p: f for p, f in fa.items() if fb.get(p, {}).get("sha256") != f["sha256"]}
    only_b = {p: f for p, f in fb.items() if fa.get(p, {}).get("sha256") != f["sha256"]}
    by_sha_b = {}
    for p in sorted(only_b):
        by_sha_b.setdefault(only_b[p]["sha256"], []).append(p)
    pairs = []
    for p in sorted(only_a):           # same bytes, another path
        others = by_sha_b.get(only_a[p]["sha256"])
        if others:
            pairs.append((p, others.pop(0)))
    for pa, pb in pairs:
        del only_a[pa], only_b[pb]
    for p in sorted(only_a.keys() & only_b.keys()):   # same path, other bytes
        pairs.append((p, p))
        del only_a[p], only_b[p]
    pairs += [(p, None) for p in sorted(only_a)] + [(None, p) for p in sorted(only_b)]
    out = []
    for pa, pb in pairs:
        sha_a, sha_b = fa.get(pa, {}).get("sha256"), fb.get(pb, {}).get("sha256")
        out.append({"a": pa, "b": pb, "sha_a": sha_a, "sha_b": sha_b, "same_content": sha_a == sha_b})
    return out


def _pair_results(xa, xb):
    """Results whose fingerprints differ, paired by node id, else by label.

    ``{key: {"label", "node_a", "node_b", "a", "b", "fp_a", "fp_b"}}``, the key being the
    node id (or Dask key) when both recordings hold it, else the label.
    """
    pairs = [(k, k) for k in xa if k in xb]
    rest_b = [k for k in xb if k not in xa]
    by_label_b = {}
    for k in rest_b:
        if xb[k]["label"]:
            by_label_b.setdefault(xb[k]["label"], []).append(k)
    unpaired_a = []
    for k in (k for k in xa if k not in xb):
        match = by_label_b.get(xa[k]["label"]) if xa[k]["label"] else None
        if match:
            other = match.pop(0)
            rest_b.remove(other)
            pairs.append((k, other))
        else:
            unpaired_a.append(k)
    pairs += [(k, None) for k in unpaired_a] + [(None, k) for k in rest_b]
    results = {}
    for ka, kb in pairs:
        ra, rb = xa.get(ka, {}), xb.get(kb, {})
        if ra.get("fp") == rb.get("fp"):
            continue
        label = ra.get("label") or rb.get("label")
        key = ka if ka == kb else (label or ka or kb)
        results[key] = {"label": label, "node_a": ka, "node_b": kb, "a": ra.get("describe"),
                        "b": rb.get("describe"), "fp_a": ra.get("fp"), "fp_b": rb.get("fp")}
    return results


def _value(description):
    """``0.88729`` for ``float 0.88729``: the type prefix of a number says nothing to a reader."""
    if description is None:
        return "absent"
    kind, _, rest = description.partition(" ")
    return rest if kind in ("float", "int") and rest else description


def format_diff(d):
    """Readable text of ``diff``: one line per differing parameter, file and result, ``recorded → other``."""
    lines = [f"{d['a']} vs {d['b']}: " + ("no differences" if d["same"] else "differences")]
    for kind, text in d["code"].items():
        lines += [f"code ({kind}):", *text.rstrip().splitlines()]
    for ns, text in d["rules"].items():
        lines += [f"rules {ns}:", *text.rstrip().splitlines()]
    for k, (va, vb) in d["parameters"].items():
        lines.append(f"parameter {k}: {va} \u2192 {vb}")
    for f in d["data"]:
        if f["same_content"]:
            lines.append(f"data {f['a']} \u2192 {f['b']}: same content (sha256 {f['sha_a'][:16]})")
        elif f["b"] is None:
            lines.append(f"data {f['a']}: only in {d['a']} (sha256 {f['sha_a'][:16]})")
        elif f["a"] is None:
            lines.append(f"data {f['b']}: only in {d['b']} (sha256 {f['sha_b'][:16]})")
        else:
            where = f["a"] if f["a"] == f["b"] else f"{f['a']} \u2192 {f['b']}"
            lines.append(f"data {where}: content {f['sha_a'][:16]} \u2192 {f['sha_b'][:16]}")
    if not d["environment"].get("same", True):
        lines += ["environment:", *format_env_diff(d["environment"]).splitlines()]
    for k, r in d["results"].items():
        lines.append(f"result {r['label'] or k}: {_value(r['a'])} \u2192 {_value(r['b'])}")
    return "\n".join(one_line(line) for line in lines)   # each a line, whatever a recorded string holds


def environment_pins(name, store=None, legacy_hmac=False):
    """The recorded kernel environment as ``requirements.txt`` text."""
    kernel, _ = recorded_environment(_open(name, store, legacy_hmac))
    if kernel is None:
        raise ValueError(f"recording {name!r} holds no environment")
    return requirements(kernel) + "\n"
