"""What the three dialects share: routing, GET of collections and items, subscription
records, and the fan-out of a change to subscribers. Each dialect module subclasses `Dialect`
and overrides shapes, roles and quirks."""

import copy
import json
import re
import threading
import uuid
from http import HTTPStatus
from urllib.parse import unquote_plus

from o2common import ID_FIELD, OPS, HttpError, field_paths, matches, parse_filter


class Req:
    def __init__(self, method, target, headers, body):
        self.method = method
        self.target = target
        path, _, query = target.partition("?")
        self.raw_path = path
        self.path = path
        self.query_text = query
        # (name, value) in order; a valueless `?x` has value None, `?x=` has "".
        self.query = []
        for part in query.split("&") if query else []:
            name, eq, value = part.partition("=")
            self.query.append((unquote(name), unquote(value) if eq else None))
        self.q = {}
        for k, v in self.query:
            self.q.setdefault(k, v)
        self.headers = headers
        self.body = body
        self.claims = None
        self.match = None

    def json(self):
        try:
            value = json.loads(self.body or b"null")
        except ValueError as e:
            raise HttpError(400, f"request body is not JSON: {e}")
        if not isinstance(value, dict):
            raise HttpError(400, "request body must be a JSON object")
        return value


def unquote(text):
    return unquote_plus(text)


class Dialect:
    NAME = ""
    BASE = ""
    READABLE_IDS = False
    DEFAULT_HEADERS = "none"
    STRIP_TRAILING_SLASH = True
    DUPLICATE_STATUS = 409
    # kind -> keys this dialect's model does not have
    DROP = {}
    # the path segment of each kind's collection
    SEGMENT = {"resourcePool": "resourcePools", "resourceType": "resourceTypes",
               "deploymentManager": "deploymentManagers", "location": "locations",
               "oCloudSite": "oCloudSites", "alarmDictionary": "alarmDictionaries"}

    def __init__(self):
        self.routes = []
        self.state = None

    # -- routing -------------------------------------------------------------------------------
    def add(self, method, pattern, roles, handler):
        """`roles` None: any valid token; a set: one of those roles (the OpenAPI security)."""
        self.routes.append((method, re.compile("^" + pattern + "$"), roles, handler))

    def route(self, req):
        path = req.path
        if self.STRIP_TRAILING_SLASH and len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/") or "/"
            req.path = path
        allowed = []
        for method, rx, roles, handler in self.routes:
            m = rx.match(path)
            if m:
                if method == req.method or (method == "GET" and req.method == "HEAD"):
                    req.match = m
                    return roles, handler
                allowed.append(method)
        if allowed:
            raise HttpError(405, f"method {req.method} not allowed",
                            headers={"Allow": ", ".join(sorted(set(allowed)))})
        raise HttpError(404, f"no such path {req.path}")

    # -- answers -------------------------------------------------------------------------------
    def error(self, status, detail, extra, req):
        """(content type, body) of an error answer."""
        body = {"status": status, "detail": detail}
        if extra:
            body["additionalAttributes"] = {k: str(v) for k, v in extra.items()}
        return "application/problem+json", body

    def render(self, kind, obj):
        out = {k: copy.deepcopy(v) for k, v in obj.items() if k not in self.DROP.get(kind, ())}
        out["_generation"] = self.state.generation
        return out

    def objects(self, kind, pred=None):
        with self.state.lock:
            return [self.render(kind, o) for o in self.state.inventory[kind].values()
                    if pred is None or pred(o)]

    def one(self, kind, oid, label):
        with self.state.lock:
            obj = self.state.inventory[kind].get(oid)
            if obj is None:
                field = ID_FIELD.get(kind, "id")
                raise HttpError(404, f"requested {label} not found", {field: oid})
            return self.render(kind, obj)

    # Dialects override these two: what a list and an item look like after the query params.
    def shape_list(self, req, kind, items):
        return items, {}

    def shape_item(self, req, kind, obj):
        return obj, {}

    def get_list(self, kind, pred=None):
        def handler(req):
            p = pred(req) if pred else None
            return (200,) + self.shape_list(req, kind, self.objects(kind, p))
        return handler

    def get_item(self, kind, group, label, check=None):
        def handler(req):
            if check:
                check(req)
            return (200,) + self.shape_item(req, kind, self.one(kind, req.match.group(group),
                                                                 label))
        return handler

    # -- common query helpers ----------------------------------------------------------------
    def apply_filter(self, req, items, known=None):
        text = req.q.get("filter")
        if not text:
            return items
        criteria = parse_filter(text)
        if known is not None:
            for _, path, _ in criteria:
                if path[0] not in known:
                    raise HttpError(400, f"invalid field name '{'.'.join(path)}' in filter")
        return [o for o in items if matches(o, criteria)]

    def selection(self, req, known=None):
        """(include, exclude) path lists from `fields` and `exclude_fields`."""
        include = exclude = None
        if req.q.get("fields"):
            include = field_paths(req.q["fields"])
        if req.q.get("exclude_fields"):
            exclude = field_paths(req.q["exclude_fields"])
        if known is not None:
            for path in (include or []) + (exclude or []):
                if path[0] not in known:
                    raise HttpError(400, f"field {'/'.join(path)} does not exist")
        return include, exclude

    # -- subscriptions -------------------------------------------------------------------------
    SUB_ID = "subscriptionId"

    def validate_subscription(self, req, body, kind):
        """Raises HttpError when the dialect refuses the subscription."""

    def subscriptions_of(self, kind):
        with self.state.lock:
            return [(sid, s["record"]) for sid, s in self.state.subscriptions.items()
                    if s["kind"] == kind]

    def create_subscription(self, kind="inventory", id_field=None):
        id_field = id_field or self.SUB_ID

        def handler(req):
            body = req.json()
            callback = body.get("callback")
            if not isinstance(callback, str) or not callback:
                raise HttpError(400, "callback is required")
            self.validate_subscription(req, body, kind)
            with self.state.lock:
                dup = self.duplicate(body, kind)
                if dup:
                    raise HttpError(self.DUPLICATE_STATUS, "callback value must be unique",
                                    {"consumerSubscriptionId": body.get("consumerSubscriptionId",
                                                                        "")})
                sid = str(uuid.uuid4())
                record = {id_field: sid}
                for k in ("consumerSubscriptionId", "filter", "callback"):
                    if k in body:
                        record[k] = body[k]
                self.state.add_subscription(sid, record, kind)
            return 201, self.sub_view(record), {"Location": f"{req.path}/{sid}"}
        return handler

    def duplicate(self, body, kind):
        return any(r.get("callback") == body["callback"] for _, r in self.subscriptions_of(kind))

    def sub_view(self, record):
        out = copy.deepcopy(record)
        out["_generation"] = self.state.generation
        return out

    def list_subscriptions(self, kind="inventory"):
        def handler(req):
            items = [self.sub_view(r) for _, r in self.subscriptions_of(kind)]
            return (200,) + self.shape_list(req, "subscription", items)
        return handler

    def get_subscription(self, kind="inventory"):
        def handler(req):
            sid = req.match.group("sid")
            with self.state.lock:
                s = self.state.subscriptions.get(sid)
            if s is None or s["kind"] != kind:
                raise HttpError(404, "requested subscription not found", {"subscriptionId": sid})
            return 200, self.sub_view(s["record"]), {}
        return handler

    def delete_subscription(self, kind="inventory", status=200):
        def handler(req):
            sid = req.match.group("sid")
            with self.state.lock:
                s = self.state.subscriptions.get(sid)
                if s is None or s["kind"] != kind:
                    raise HttpError(404, "requested subscription not found",
                                    {"subscriptionId": sid})
                self.state.remove_subscription(sid)
            return status, None, {}
        return handler

    def reachable(self, callback, consumer):
        """oran's check: a GET on the callback answers 204 within 5 s."""
        status, error = self.state.http_call("GET", callback, token=self.state.notifier_token(),
                                             timeout=5.0)
        self.state.record_delivery({"kind": "reachability", "callback": callback,
                                    "attempt": 1, "status": status, "error": error})
        if status != 204:
            raise HttpError(400, "callback URL validation failed",
                            {"consumerSubscriptionId": consumer or ""})

    # -- notifications -------------------------------------------------------------------------
    def object_ref(self, kind, obj):
        return None

    def retry_policy(self, attempt, status, error):
        """The delay in ms before the next attempt, or None to stop."""
        return None

    def notifications(self, kind, op, prior, post, opts):
        """[(subscription id, body)] for one change: the dialect's shape per subscriber."""
        return []

    def event_name(self, op):
        return OPS[op]


def fan_out(state, kind, op, prior, post, opts):
    """Queues one change for every subscriber; with `wait`, returns once all attempts ended."""
    dialect = state.dialect
    jobs = dialect.notifications(kind, op, prior, post, opts)
    sems = []
    for sid, body in jobs:
        copies = 2 if opts.get("duplicate") else 1
        for _ in range(copies):
            if opts.get("drop"):
                state.record_delivery({"kind": "dropped", "subscriptionId": sid,
                                       "attempt": 0, "status": None, "error": "dropped",
                                       "body": body,
                                       "notificationId": body.get("notificationId")
                                       if isinstance(body, dict) else None})
                continue
            job = {"body": body, "delay_ms": opts.get("delay_ms", 0)}
            if "token" in opts:
                job["token"] = opts["token"]
            if opts.get("wait"):
                job["done"] = threading.Semaphore(0)
                sems.append(job["done"])
            state.enqueue(sid, job)
    for s in sems:
        s.acquire(timeout=30)
    return len(jobs)


def phrase(status):
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
