"""Shared parts of the test O2 IMS server: JWT keys and tokens, the inventory, the filter and
field-selection grammars, subscriptions and the notification delivery workers.

The dialect modules (oran.py, pti.py, netweave.py) decide shapes and quirks; this module holds
the state they share. Written from the OpenAPI files named in the design brief; no code copied.
"""

import base64
import copy
import hashlib
import json
import queue
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.exceptions import InvalidSignature

# Deterministic ids: the same inventory every start, so tests can name objects.
ID_NS = uuid.UUID("6f2b1c9e-3d1a-4c55-9d0e-0a11c0ffee00")

OPS = {"create": 0, "modify": 1, "delete": 2}


def now_ms():
    return int(time.time() * 1000)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class HttpError(Exception):
    """An error answer: the dialect renders it in its own error shape."""

    def __init__(self, status, detail, extra=None, headers=None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}


# ---------------------------------------------------------------------------------------------
# Tokens


class Keys:
    """An RSA-2048 and a P-256 key made at start; jwks.json holds both public halves."""

    def __init__(self):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.kids = {"RS256": "fake-rsa-1", "ES256": "fake-ec-1"}

    def jwks(self):
        rn = self.rsa.public_key().public_numbers()
        en = self.ec.public_key().public_numbers()

        def be(n, size=None):
            size = size or (n.bit_length() + 7) // 8
            return b64url(n.to_bytes(size, "big"))

        return {
            "keys": [
                {"kty": "RSA", "kid": self.kids["RS256"], "use": "sig", "alg": "RS256",
                 "n": be(rn.n), "e": be(rn.e)},
                {"kty": "EC", "kid": self.kids["ES256"], "use": "sig", "alg": "ES256",
                 "crv": "P-256", "x": be(en.x, 32), "y": be(en.y, 32)},
            ]
        }

    def sign(self, claims, alg="RS256"):
        if alg not in self.kids:
            raise HttpError(400, "alg must be RS256 or ES256")
        header = {"alg": alg, "typ": "JWT", "kid": self.kids[alg]}
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + b64url(json.dumps(claims, separators=(",", ":")).encode()))
        data = signing_input.encode()
        if alg == "RS256":
            sig = self.rsa.sign(data, padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(self.ec.sign(data, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input + "." + b64url(sig)

    def verify(self, token):
        """The claims of a valid, unexpired token; None for anything else."""
        try:
            head_b64, claims_b64, sig_b64 = token.split(".")
            header = json.loads(b64url_decode(head_b64))
            claims = json.loads(b64url_decode(claims_b64))
            sig = b64url_decode(sig_b64)
            data = (head_b64 + "." + claims_b64).encode()
            alg = header.get("alg")
            if alg == "RS256":
                self.rsa.public_key().verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
            elif alg == "ES256" and len(sig) == 64:
                der = encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                           int.from_bytes(sig[32:], "big"))
                self.ec.public_key().verify(der, data, ec.ECDSA(hashes.SHA256()))
            else:
                return None
        except (ValueError, InvalidSignature, TypeError, UnicodeDecodeError):
            return None
        if not isinstance(claims, dict):
            return None
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp <= time.time():
            return None
        return claims


def roles_of(claims):
    """The O2 roles in a token's groups claim; `role:o2ims-x` and `o2ims-x` are the same."""
    groups = claims.get("groups") or []
    if isinstance(groups, str):
        groups = [groups]
    return {g[5:] if g.startswith("role:") else g for g in groups if isinstance(g, str)}


# ---------------------------------------------------------------------------------------------
# Query grammars (common/api/openapi.yaml: filter; ETSI SOL013 5.3.2.2: fields)


def parse_filter(text):
    """`(op,field[/sub],v[,v...]);(...)` into [(op, [path], [values])]; quoted values keep
    commas, slashes and spaces. Raises HttpError(400) on anything malformed."""
    ops = {"cont", "eq", "gt", "gte", "in", "lt", "lte", "ncont", "neq", "nin"}
    criteria, i, n = [], 0, len(text)
    while i < n:
        if text[i] != "(":
            raise HttpError(400, f"invalid filter {text!r}: expected '(' at {i}")
        i += 1
        parts, cur, quoted = [], [], False
        while True:
            if i >= n:
                raise HttpError(400, f"invalid filter {text!r}: unclosed criterion")
            c = text[i]
            if quoted:
                if c == "'" and i + 1 < n and text[i + 1] == "'":
                    cur.append("'")
                    i += 2
                    continue
                if c == "'":
                    quoted = False
                else:
                    cur.append(c)
                i += 1
                continue
            if c == "'":
                quoted = True
            elif c == ",":
                parts.append("".join(cur))
                cur = []
            elif c == ")":
                parts.append("".join(cur))
                i += 1
                break
            else:
                cur.append(c)
            i += 1
        if len(parts) < 3 or parts[0] not in ops or not parts[1]:
            raise HttpError(400, f"invalid filter criterion {parts!r}")
        op, field, values = parts[0], parts[1], parts[2:]
        if op in {"eq", "neq", "gt", "gte", "lt", "lte"} and len(values) != 1:
            raise HttpError(400, f"operator {op} takes one value, got {len(values)}")
        criteria.append((op, field.split("/"), values))
        if i < n:
            if text[i] != ";":
                raise HttpError(400, f"invalid filter {text!r}: expected ';' at {i}")
            i += 1
    return criteria


def _lookup(obj, path):
    for p in path:
        if isinstance(obj, dict) and p in obj:
            obj = obj[p]
        else:
            return None, False
    return obj, True


def _as_text(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _compare(a, b):
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        x, y = _as_text(a), b
    return (x > y) - (x < y)


def matches(obj, criteria):
    for op, path, values in criteria:
        value, present = _lookup(obj, path)
        texts = [_as_text(x) for x in value] if isinstance(value, list) else [_as_text(value)]
        # On a list, eq and neq ask about its elements (a tag is among the tags, or not).
        if op == "eq":
            ok = present and values[0] in texts
        elif op == "neq":
            ok = not present or values[0] not in texts
        elif op == "in":
            ok = present and any(t in values for t in texts)
        elif op == "nin":
            ok = not present or not any(t in values for t in texts)
        elif op == "cont":
            ok = present and any(v in t for v in values for t in texts)
        elif op == "ncont":
            ok = not present or not any(v in t for v in values for t in texts)
        else:
            if not present:
                ok = False
            else:
                c = _compare(value, values[0])
                ok = {"gt": c > 0, "gte": c >= 0, "lt": c < 0, "lte": c <= 0}[op]
        if not ok:
            return False
    return True


def field_paths(text):
    return [p.strip().split("/") for p in text.split(",") if p.strip()]


def select(obj, include=None, exclude=None):
    """SOL013 selection: keep the `include` subtrees (all when None), then drop the `exclude`
    subtrees; exclusion wins. `_generation` always stays."""
    if include is not None:
        out = {}
        for path in include:
            _copy_path(obj, out, path)
        if "_generation" in obj:
            out["_generation"] = obj["_generation"]
    else:
        out = copy.deepcopy(obj)
    for path in exclude or []:
        _drop_path(out, path)
    return out


def _copy_path(src, dst, path):
    key = path[0]
    if not isinstance(src, dict) or key not in src:
        return
    if len(path) == 1 or not isinstance(src[key], dict):
        dst[key] = copy.deepcopy(src[key])
        return
    sub = dst.setdefault(key, {})
    if isinstance(sub, dict):
        _copy_path(src[key], sub, path[1:])


def _drop_path(obj, path):
    for p in path[:-1]:
        if not isinstance(obj, dict) or p not in obj:
            return
        obj = obj[p]
    if isinstance(obj, dict):
        obj.pop(path[-1], None)


# ---------------------------------------------------------------------------------------------
# Inventory


KINDS = ["ocloud", "resourcePool", "resource", "resourceType", "deploymentManager", "location",
         "oCloudSite", "alarmDictionary", "alarm", "clusterResource"]

ID_FIELD = {
    "ocloud": "oCloudId", "resourcePool": "resourcePoolId", "resource": "resourceId",
    "resourceType": "resourceTypeId", "deploymentManager": "deploymentManagerId",
    "location": "globalLocationId", "oCloudSite": "oCloudSiteId",
    "alarmDictionary": "alarmDictionaryId", "alarm": "alarmEventRecordId",
    "clusterResource": "clusterResourceId",
}


def uid(name):
    return str(uuid.uuid5(ID_NS, name))


def build_inventory(readable_ids):
    """3 pools, 2 sites, 2 locations, 4 resource types (each with an alarm dictionary), 2
    deployment managers, 40 resources (32 in the first pool: two pti pages), 5 alarms and 2
    cluster resources (oran's cluster API), as
    {kind: {id: object}} with every field any dialect shows; dialects drop what they lack."""
    def mk(kind, i):
        if readable_ids:
            short = {"resourcePool": "pool", "resource": "node", "resourceType": "rt",
                     "deploymentManager": "dm", "oCloudSite": "site", "alarm": "alarm",
                     "alarmDictionary": "dict", "ocloud": "ocloud",
                     "clusterResource": "cr"}.get(kind, kind)
            return f"{short}-{i:02d}" if kind == "resource" else f"{short}-{i}"
        return uid(f"{kind}-{i}")

    inv = {k: {} for k in KINDS}
    cloud = mk("ocloud", 1)
    inv["ocloud"][cloud] = {
        "oCloudId": cloud, "globalCloudId": uid("global-cloud"), "name": "fake-ocloud",
        "description": "test O-Cloud", "serviceUri": "http://o2ims.example/", "extensions": {},
    }
    locations = ["LOC-EAST-1", "LOC-WEST-1"]
    sites = [mk("oCloudSite", i) for i in (1, 2)]
    pools = [mk("resourcePool", i) for i in (1, 2, 3)]
    pool_site = [sites[0], sites[0], sites[1]]
    for i, loc in enumerate(locations):
        inv["location"][loc] = {
            "globalLocationId": loc, "name": f"location {i + 1}", "description": "a room",
            "oCloudSiteIds": [sites[i]],
            "coordinate": {"type": "Point", "coordinates": [-73.9 + i, 40.7 + i]},
            "civicAddress": [{"caType": 3, "caValue": f"City {i + 1}"}],
            "address": f"{i + 1} Test Street", "extensions": {},
        }
    for i, s in enumerate(sites):
        inv["oCloudSite"][s] = {
            "oCloudSiteId": s, "globalLocationId": locations[i], "name": f"site-{i + 1}",
            "description": f"site {i + 1}",
            "resourcePools": [p for p, ps in zip(pools, pool_site) if ps == s], "extensions": {},
        }
    for i, p in enumerate(pools):
        site = pool_site[i]
        inv["resourcePool"][p] = {
            "resourcePoolId": p, "name": f"pool-{i + 1}", "oCloudSiteId": site,
            "globalLocationId": inv["oCloudSite"][site]["globalLocationId"],
            "oCloudId": cloud, "location": f"room {i + 1}", "description": f"pool {i + 1}",
            "extensions": {"tier": ["gold", "silver", "bronze"][i]},
        }
    kinds = [("PHYSICAL", "COMPUTE"), ("PHYSICAL", "NETWORKING"), ("LOGICAL", "STORAGE"),
             ("PHYSICAL", "COMPUTE")]
    types = []
    for i, (rk, rc) in enumerate(kinds):
        t, d = mk("resourceType", i + 1), mk("alarmDictionary", i + 1)
        types.append(t)
        inv["alarmDictionary"][d] = {
            "alarmDictionaryId": d, "alarmDictionaryVersion": "1.0",
            "alarmDictionarySchemaVersion": "1.0", "entityType": f"type-{i + 1}",
            "vendor": "Acme", "managementInterfaceId": ["O2IMS"],
            "pkNotificationField": ["alarmDefinitionID"],
            "alarmDefinition": [{"alarmDefinitionId": uid(f"def-{i}"), "alarmName": "Hot",
                                 "alarmDescription": "too hot", "proposedRepairActions": "cool",
                                 "alarmAdditionalFields": {}}],
            "resourceTypeId": t,
        }
        inv["resourceType"][t] = {
            "resourceTypeId": t, "name": f"type-{i + 1}", "description": f"{rc.lower()} kind",
            "vendor": "Acme", "model": f"M{i + 1}", "version": "1.0", "alarmDictionaryId": d,
            "resourceKind": rk, "resourceClass": rc, "extensions": {},
        }
    for i in (1, 2):
        d = mk("deploymentManager", i)
        inv["deploymentManager"][d] = {
            "deploymentManagerId": d, "name": f"cluster-{i}", "description": f"cluster {i}",
            "oCloudId": cloud, "serviceUri": f"https://api.cluster-{i}.example:6443",
            "supportedLocations": [locations[i - 1]], "capabilities": {"ha": True},
            "capacity": {"cpu": 64 * i},
            "extensions": {"profileName": "native_k8sapi", "profileData": {
                "cluster_api_endpoint": f"https://api.cluster-{i}.example:6443",
                "admin_user": "kubernetes-admin",
                "admin_client_key": f"SECRET-{uuid.uuid4()}",
            }},
        }
    for i in range(40):
        r = mk("resource", i + 1)
        pool = pools[0] if i < 32 else pools[1 + (i - 32) % 2]
        inv["resource"][r] = {
            "resourceId": r, "resourcePoolId": pool, "resourceTypeId": types[i % 4],
            "globalAssetId": f"asset-{i + 1}", "parentId": None, "description": f"node {i + 1}",
            "elements": [], "tags": [f"rack-{i % 5}"], "groups": [],
            "extensions": {"serial": f"SN{i + 1:04d}"},
        }
    resources = list(inv["resource"])
    for i in range(5):
        a = mk("alarm", i + 1)
        inv["alarm"][a] = {
            "alarmEventRecordId": a, "alarmDefinitionID": uid(f"def-{i % 4}"),
            "probableCauseID": uid(f"cause-{i}"), "alarmRaisedTime": "2026-12-01T00:00:00Z",
            "alarmChangedTime": "2026-12-01T00:00:00Z", "alarmAcknowledged": False,
            "resourceTypeID": types[i % 4], "resourceID": resources[i], "perceivedSeverity": i % 5,
            "extensions": {},
        }
    for i in range(2):
        c = mk("clusterResource", i + 1)
        inv["clusterResource"][c] = {
            "clusterResourceId": c, "name": f"master-{i}", "description": f"node {i + 1}",
            "clusterResourceTypeId": uid("clusterResourceType-1"),
            "memberOf": [uid("nodeCluster-1")], "artifactResourceIds": [],
            "resourceId": resources[i], "extensions": {},
        }
    return inv


# ---------------------------------------------------------------------------------------------
# State shared by the API and control listeners


class State:
    def __init__(self, args, dialect):
        self.args = args
        self.dialect = dialect
        self.lock = threading.RLock()
        self.keys = Keys()
        self.generation = 1
        self.inventory = build_inventory(dialect.READABLE_IDS)
        self.alarm_config = {"retentionPeriod": 14, "extensions": {}}
        self.subscriptions = {}  # id -> {"record": {...}, "kind": "inventory"|"alarm"}
        self.workers = {}  # subscription id -> Worker
        self.deliveries = []
        self.counters = {}
        self.behaviour = {}
        self.started_ms = now_ms()

    # -- counters ------------------------------------------------------------------------------
    def count(self, method, target, sub, status):
        with self.lock:
            c = self.counters
            c["total"] = c.get("total", 0) + 1
            for key, value in (("by_method", method), ("by_path", target),
                               ("by_method_path", f"{method} {target}"),
                               ("by_sub", sub or "-"), ("by_status", str(status))):
                d = c.setdefault(key, {})
                d[value] = d.get(value, 0) + 1

    def counters_snapshot(self):
        with self.lock:
            out = json.loads(json.dumps(self.counters))
            for key in ("by_method", "by_path", "by_method_path", "by_sub", "by_status"):
                out.setdefault(key, {})
            out.setdefault("total", 0)
            out["generation"] = self.generation
            return out

    # -- deliveries ----------------------------------------------------------------------------
    def record_delivery(self, entry):
        with self.lock:
            entry["n"] = len(self.deliveries) + 1
            entry["at_ms"] = now_ms()
            self.deliveries.append(entry)

    def notifier_token(self):
        return self.keys.sign({"sub": "o2ims-notifier", "groups": ["o2ims-notifier"],
                               "iss": "o2ims-fake", "iat": int(time.time()),
                               "exp": int(time.time()) + 3600})

    def http_call(self, method, url, body=None, token=None, timeout=5.0):
        """(status, error) of one request to a callback; status None when nothing answered."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        ctx = None
        if url.startswith("https:"):
            ctx = ssl.create_default_context(cafile=self.args.callback_ca)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
                resp.read()
                return resp.status, None
        except urllib.error.HTTPError as e:
            return e.code, None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ConnectionRefusedError):
                return None, "refused"
            if isinstance(reason, socket.gaierror):
                return None, "dns"
            return None, f"{type(reason).__name__}: {reason}"
        except (socket.timeout, TimeoutError):
            return None, "timeout"
        except OSError as e:
            return None, f"{type(e).__name__}: {e}"

    # -- subscriptions -------------------------------------------------------------------------
    def add_subscription(self, sid, record, kind):
        with self.lock:
            self.subscriptions[sid] = {"record": record, "kind": kind}
            worker = Worker(self, sid)
            self.workers[sid] = worker
            worker.start()

    def remove_subscription(self, sid):
        with self.lock:
            gone = self.subscriptions.pop(sid, None)
            worker = self.workers.pop(sid, None)
        if worker:
            worker.stop()
        return gone

    def restart(self):
        with self.lock:
            sids = list(self.subscriptions)
        for sid in sids:
            self.remove_subscription(sid)
        return len(sids)

    def enqueue(self, sid, job):
        with self.lock:
            worker = self.workers.get(sid)
        if worker:
            worker.jobs.put(job)
            return True
        return False


class Worker(threading.Thread):
    """One queue per subscription, delivered in order, as oran-o2ims does per subscriber."""

    def __init__(self, state, sid):
        super().__init__(daemon=True)
        self.state, self.sid = state, sid
        self.jobs = queue.Queue()
        self.stopped = threading.Event()

    def stop(self):
        self.stopped.set()
        self.jobs.put(None)

    def run(self):
        while not self.stopped.is_set():
            job = self.jobs.get()
            if job is None:
                break
            try:
                deliver(self.state, self.sid, job)
            finally:
                done = job.get("done")
                if done is not None:
                    done.release()
        # Stopped (the subscription is gone): whoever waits on a queued job stops waiting.
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.get("done") is not None:
                job["done"].release()


def deliver(state, sid, job):
    """POSTs one notification with the dialect's retry schedule (scaled down to ms)."""
    if job.get("delay_ms"):
        time.sleep(job["delay_ms"] / 1000)
    with state.lock:
        sub = state.subscriptions.get(sid)
    if sub is None:
        return
    callback = job.get("callback") or sub["record"]["callback"]
    token = job.get("token", state.notifier_token())
    retry = state.dialect.retry_policy
    attempt = 0
    while True:
        attempt += 1
        status, error = state.http_call("POST", callback, job["body"], token)
        entry = {"kind": "notification", "subscriptionId": sid, "callback": callback,
                 "attempt": attempt, "status": status, "error": error, "body": job["body"],
                 "notificationId": job["body"].get("notificationId")
                 if isinstance(job["body"], dict) else None}
        state.record_delivery(entry)
        delay = retry(attempt, status, error)
        if delay is None or state.subscriptions.get(sid) is None:
            return
        time.sleep(delay / 1000)


def etag_of(body):
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
