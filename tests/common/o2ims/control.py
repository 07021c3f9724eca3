"""The control port of the test O2 IMS server: what a test does to the fake (mint tokens,
change the inventory, send or break notifications, inject faults) and what it reads back
(counters, subscriptions, deliveries). JSON in, JSON out; never reachable through the API port."""

import copy
import json
import re
import threading
import time
import uuid

from base import fan_out
from o2common import ID_FIELD, KINDS, OPS, HttpError


def token(state, body):
    sub = body.get("sub", "tester")
    groups = body.get("groups", [])
    exp_in = body.get("exp_in", 300)
    if not isinstance(sub, str) or not isinstance(groups, list) or \
            not isinstance(exp_in, (int, float)):
        raise HttpError(400, "token wants {sub: str, groups: [str], exp_in: seconds}")
    now = int(time.time())
    claims = {"iss": "o2ims-fake", "sub": sub, "groups": groups, "iat": now,
              "exp": now + int(exp_in)}
    claims.update(body.get("claims") or {})
    return {"token": state.keys.sign(claims, body.get("alg", "RS256")), "claims": claims}


def _kind(body):
    kind = body.get("kind")
    if kind not in KINDS:
        raise HttpError(400, f"kind must be one of {KINDS}, got {kind!r}")
    op = body.get("op", "modify")
    if op not in OPS:
        raise HttpError(400, f"op must be create, modify or delete, got {op!r}")
    return kind, op


def mutate(state, body):
    """Changes one object, bumps the generation, and notifies every subscriber as the dialect
    would. Returns what changed and how many notifications went out."""
    kind, op = _kind(body)
    fields = body.get("fields") or {}
    if not isinstance(fields, dict):
        raise HttpError(400, "fields must be an object")
    idf = ID_FIELD[kind]
    with state.lock:
        table = state.inventory[kind]
        oid = body.get("id")
        if op == "create":
            if not table:
                raise HttpError(400, f"no {kind} to model a new one on")
            template = copy.deepcopy(next(iter(table.values())))
            oid = oid or (f"{kind}-new-{state.generation + 1}" if state.dialect.READABLE_IDS
                          else str(uuid.uuid4()))
            if oid in table:
                raise HttpError(409, f"{kind} {oid} exists")
            template[idf] = oid
            template.update(fields)
            if kind == "deploymentManager":
                template["extensions"]["profileData"]["admin_client_key"] = \
                    f"SECRET-{uuid.uuid4()}"
            table[oid] = template
            prior, post = None, copy.deepcopy(template)
            if kind == "resourcePool":
                site = state.inventory["oCloudSite"].get(template.get("oCloudSiteId"))
                if site is not None:
                    site["resourcePools"].append(oid)
        else:
            if oid not in table:
                raise HttpError(404, f"no {kind} {oid!r}")
            prior = copy.deepcopy(table[oid])
            if op == "modify":
                change = dict(fields) or {
                    "description": f"{prior.get('description', '')} (g{state.generation + 1})"}
                table[oid].update(change)
                post = copy.deepcopy(table[oid])
            else:
                del table[oid]
                post = None
        state.generation += 1
        generation = state.generation
        ref = state.dialect.object_ref(kind, post or prior)
    opts = {k: body[k] for k in ("drop", "duplicate", "omit_object_ref", "delay_ms", "wait",
                                 "int_type", "token") if k in body}
    sent = fan_out(state, kind, op, prior, post, opts)
    return {"generation": generation, "kind": kind, "id": oid, "op": op, "objectRef": ref,
            "notified": sent}


def notify(state, body):
    """A notification without a change: `raw` (any JSON, or a string sent as it is) to every
    subscriber, or the dialect's body for {kind, id, op} with faults (drop, duplicate,
    omit_object_ref, delay_ms, int_type, token). A forced pti delete is sent too."""
    if "raw" in body:
        raw = body["raw"]
        payload = raw.encode() if isinstance(raw, str) else json.dumps(raw).encode()
        sids = [body["subscriptionId"]] if body.get("subscriptionId") else \
            [sid for sid, _ in state.dialect.subscriptions_of(body.get("family", "inventory"))]
        sems = []
        for sid in sids:
            job = {"body": payload, "delay_ms": body.get("delay_ms", 0)}
            if "token" in body:
                job["token"] = body["token"]
            if body.get("wait"):
                job["done"] = threading.Semaphore(0)
                sems.append(job["done"])
            if not state.enqueue(sid, job):
                raise HttpError(404, f"no subscription {sid}")
        for s in sems:
            s.acquire(timeout=30)
        return {"queued": len(sids)}
    kind, op = _kind(body)
    with state.lock:
        obj = state.inventory[kind].get(body.get("id"))
        if obj is None:
            if op != "delete" or not isinstance(body.get("object"), dict):
                raise HttpError(404, f"no {kind} {body.get('id')!r} (a delete may give "
                                     "`object`)")
            obj = body["object"]
        obj = copy.deepcopy(obj)
    prior = None if op == "create" else obj
    post = None if op == "delete" else obj
    opts = {k: body[k] for k in ("drop", "duplicate", "omit_object_ref", "delay_ms", "wait",
                                 "int_type", "token") if k in body}
    opts["forced"] = True
    return {"queued": fan_out(state, kind, op, prior, post, opts)}


def behave(state, body):
    """One fault rule for API requests whose path+query matches `path_regex` (all when
    absent): `latency_ms`, `status` (answered as the dialect's error), `close` (hang up with no
    answer). An empty body clears it."""
    rule = {}
    if body:
        try:
            rule["rx"] = re.compile(body.get("path_regex") or "")
        except re.error as e:
            raise HttpError(400, f"path_regex: {e}")
        for k in ("latency_ms", "status"):
            if k in body and not isinstance(body[k], int):
                raise HttpError(400, f"{k} must be an integer")
        rule.update({k: body[k] for k in ("latency_ms", "status", "close") if k in body})
    with state.lock:
        state.behaviour = rule
    return {"behaviour": {k: v for k, v in rule.items() if k != "rx"}}


def inventory(state):
    with state.lock:
        return {"generation": state.generation,
                "ids": {k: list(v) for k, v in state.inventory.items()},
                "base": state.dialect.BASE, "dialect": state.dialect.NAME}


def handle(state, method, path, body):
    """(status, JSON) of one control request."""
    routes = {
        ("POST", "/__fake/token"): lambda: token(state, body),
        ("POST", "/__fake/mutate"): lambda: mutate(state, body),
        ("POST", "/__fake/notify"): lambda: notify(state, body),
        ("POST", "/__fake/behave"): lambda: behave(state, body),
        ("POST", "/__fake/restart"): lambda: {"dropped": state.restart()},
        ("GET", "/__fake/counters"): state.counters_snapshot,
        ("DELETE", "/__fake/counters"): lambda: reset_counters(state),
        ("GET", "/__fake/subscriptions"): lambda: subscriptions(state),
        ("GET", "/__fake/deliveries"): lambda: deliveries(state),
        ("GET", "/__fake/inventory"): lambda: inventory(state),
        ("GET", "/__fake/jwks.json"): state.keys.jwks,
    }
    fn = routes.get((method, path))
    if fn is None:
        raise HttpError(404, f"no control endpoint {method} {path}")
    return 200, fn()


def reset_counters(state):
    with state.lock:
        state.counters = {}
    return {"reset": True}


def subscriptions(state):
    with state.lock:
        return [{"id": sid, "family": s["kind"], "record": s["record"]}
                for sid, s in state.subscriptions.items()]


def deliveries(state):
    with state.lock:
        return json.loads(json.dumps(state.deliveries, default=_bytes))


def _bytes(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(type(value))
