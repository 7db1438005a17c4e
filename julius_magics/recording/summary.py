"""Reading recordings for people: details of one, differences between two.

Only the JSON parts are read (nothing is unpickled), so these work on any
recording whose bytes verify, whoever signed it.
"""

from __future__ import annotations

import difflib

from . import steps
from .environment import env_diff, format_env_diff, requirements
from .steps import recorded_environment
from .store import Store

__all__ = ["details", "diff", "recorded_environment", "format_details", "format_diff", "environment_pins"]


def _open(name, store):
    return Store.coerce(store).open(name, trust=True)   # read-only and pickle-free: hashes still verified


def _results(recording):
    """``{node id or key: {"label", "fp", "describe"}}`` of every recorded result."""
    return {nid: result for step in recording.steps for nid, result in steps.results(step).items()}


def _files(recording):
    return {f["path"]: f for s in recording.steps if s.kind == "data" for f in s.data["files"]}


def details(name, store=None):
    """Details of a recording as plain JSON: info, steps, environment summary, data files, results."""
    recording = _open(name, store)
    kernel, workers = recorded_environment(recording)
    env = None
    if kernel is not None:
        env = {"python": kernel.get("python", {}).get("version"), "os": kernel.get("os", {}).get("system"),
               "release": kernel.get("os", {}).get("release"), "packages": len(kernel.get("packages", {})),
               "workers": len(workers),
               "workers_same_as_kernel": all(env_diff(kernel, w)["same"] for w in workers.values())}
    return {
        "info": recording.info.as_dict(),
        "meta": recording.meta,
        "steps": [{"seq": s.seq, "kind": s.kind, "summary": steps.summary(s)} for s in recording.steps],
        "environment": env,
        "data": list(_files(recording).values()),
        "results": [{"node": k, **v} for k, v in _results(recording).items()],
        "verification": recording.verification,
    }


def format_details(details):
    """Readable text of :func:`details`."""
    info = details["info"]
    lines = [f"{info['name']}: {info['status']}, {info['steps']} steps, {info['size']:,} bytes, "
             f"{info['workers']} workers, created {info['created']}" + (f" -- {info['note']}" if info["note"] else "")]
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
                  f"{'embedded' if f['embedded'] else 'hash only'}" for f in details["data"]]
    lines.append(f"results: {len(details['results'])}")
    lines += [f"  {r['label'] or r['node']}: {r['describe']}  [{r['fp'][:12]}]" for r in details["results"]]
    return "\n".join(lines)


def _sources(recording, kind, key=None):
    texts = {}
    for s in recording.steps:
        if s.kind == kind:
            texts.setdefault(s.data.get(key, "") if key else "", []).append(s.data["source"])
    return {k: "\n".join(v) for k, v in texts.items()}


def _text_diff(a, b, name_a, name_b):
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), name_a, name_b))


def diff(name_a, name_b, store=None):
    """What differs between two recordings: code, rules, parameters, data, environment, results."""
    a, b = _open(name_a, store), _open(name_b, store)
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
    fa, fb = _files(a), _files(b)
    data = {p: [fa.get(p, {}).get("sha256"), fb.get(p, {}).get("sha256")]
            for p in sorted(fa.keys() | fb.keys()) if fa.get(p, {}).get("sha256") != fb.get(p, {}).get("sha256")}
    (ka, _), (kb, _) = recorded_environment(a), recorded_environment(b)
    environment = env_diff(ka, kb) if ka is not None and kb is not None else {"same": ka == kb}
    xa, xb = _results(a), _results(b)
    results = {k: {"label": (xa.get(k) or xb.get(k))["label"],
                   "a": xa.get(k, {}).get("describe"), "b": xb.get(k, {}).get("describe"),
                   "fp_a": xa.get(k, {}).get("fp"), "fp_b": xb.get(k, {}).get("fp")}
               for k in sorted(xa.keys() | xb.keys()) if xa.get(k, {}).get("fp") != xb.get(k, {}).get("fp")}
    return {"a": name_a, "b": name_b, "code": code, "rules": rules, "parameters": parameters, "data": data,
            "environment": environment, "results": results,
            "same": not (code or rules or parameters or data or results) and environment.get("same", True)}


def format_diff(d):
    """Readable text of ``diff``."""
    lines = [f"{d['a']} vs {d['b']}: " + ("no differences" if d["same"] else "differences")]
    for kind, text in d["code"].items():
        lines += [f"code ({kind}):", text.rstrip()]
    for ns, text in d["rules"].items():
        lines += [f"rules {ns}:", text.rstrip()]
    for k, (va, vb) in d["parameters"].items():
        lines.append(f"parameter {k}: {va} -> {vb}")
    for path, (sa, sb) in d["data"].items():
        lines.append(f"data {path}: {(sa or 'absent')[:16]} -> {(sb or 'absent')[:16]}")
    if not d["environment"].get("same", True):
        lines += ["environment:", format_env_diff(d["environment"])]
    for k, r in d["results"].items():
        lines.append(f"result {r['label'] or k}: {r['a'] or 'absent'} -> {r['b'] or 'absent'}")
    return "\n".join(lines)


def environment_pins(name, store=None):
    """The recorded kernel environment as ``requirements.txt`` text."""
    kernel, _ = recorded_environment(_open(name, store))
    if kernel is None:
        raise ValueError(f"recording {name!r} holds no environment")
    return requirements(kernel) + "\n"
