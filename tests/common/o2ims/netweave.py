"""The `netweave` dialect: piwi3910/netweave at 99435cf (OpenAPI `servers.url: /o2ims/v1`).

Quirks kept: every answer has `Cache-Control: no-store` (security_headers.go; the default
`--headers` of this dialect); lists are wrapped as {"<collection>": [...], "total": N} with
`offset`/`limit` paging (limit 1..100, default 20); a top-level /resources with a
`resourcePoolId` query filter; readable string ids (pool-1, node-01); errors as
{"error", "message", "code"}; authentication only (the spec's mTLS stands for the bearer here);
a subscription filter is an object of id lists that selects what to report; a duplicate
consumerSubscriptionId is 409; notifications carry `subscriptionId`, a string event type
`o2ims.<Kind>.<Created|Updated|Deleted>`, an objectRef under /o2ims/v1 (resources at the top
level, not under their pool), flat ids and a `callbackUrl`; delivery is retried 3 times after
10, 20 and 40 ms (1, 2, 4 s scaled down)."""

import time
import urllib.parse
import uuid

from base import Dialect, phrase
from o2common import HttpError

BASE = "/o2ims/v1"

LIST_KEY = {"resourcePool": "resourcePools", "resource": "resources",
            "resourceType": "resourceTypes", "deploymentManager": "deploymentManagers",
            "subscription": "subscriptions"}
KIND_NAME = {"resourcePool": "ResourcePool", "resource": "Resource",
             "resourceType": "ResourceType", "deploymentManager": "DeploymentManager"}
EVENT = {"create": "Created", "modify": "Updated", "delete": "Deleted"}
ERROR_NAME = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
              405: "MethodNotAllowed", 409: "Conflict", 500: "InternalError",
              503: "ServiceUnavailable"}


class Netweave(Dialect):
    NAME = "netweave"
    BASE = BASE
    READABLE_IDS = True
    DEFAULT_HEADERS = "no-store"
    STRIP_TRAILING_SLASH = False
    DUPLICATE_STATUS = 409
    DROP = {"resourcePool": {"oCloudSiteId"},
            "resource": {"parentId", "tags", "groups", "elements"},
            "resourceType": {"alarmDictionaryId"},
            "ocloud": {"globalCloudId", "extensions"}}

    def __init__(self):
        super().__init__()
        v = BASE
        self.add("GET", v + "/subscriptions", None, self.list_subscriptions())
        self.add("POST", v + "/subscriptions", None, self.create_subscription())
        self.add("GET", v + "/subscriptions/(?P<sid>[^/]+)", None, self.get_subscription())
        self.add("PUT", v + "/subscriptions/(?P<sid>[^/]+)", None, self.put_subscription)
        self.add("DELETE", v + "/subscriptions/(?P<sid>[^/]+)", None,
                 self.delete_subscription(status=204))
        self.add("GET", v + "/resourcePools", None, self.get_list("resourcePool"))
        self.add("GET", v + "/resourcePools/(?P<id>[^/]+)", None,
                 self.get_item("resourcePool", "id", "resource pool"))
        self.add("GET", v + "/resourcePools/(?P<pool>[^/]+)/resources", None, self.pool_resources)
        self.add("GET", v + "/resources", None, self.get_list("resource", lambda req: (
            (lambda o, p=req.q["resourcePoolId"]: o["resourcePoolId"] == p)
            if req.q.get("resourcePoolId") else None)))
        self.add("GET", v + "/resources/(?P<id>[^/]+)", None,
                 self.get_item("resource", "id", "resource"))
        self.add("GET", v + "/resourceTypes", None, self.get_list("resourceType"))
        self.add("GET", v + "/resourceTypes/(?P<id>[^/]+)", None,
                 self.get_item("resourceType", "id", "resource type"))
        self.add("GET", v + "/deploymentManagers", None, self.get_list("deploymentManager"))
        self.add("GET", v + "/deploymentManagers/(?P<id>[^/]+)", None,
                 self.get_item("deploymentManager", "id", "deployment manager"))
        self.add("GET", v + "/oCloudInfrastructure", None, self.cloud)

    def error(self, status, detail, extra, req):
        name = ERROR_NAME.get(status, phrase(status).replace(" ", ""))
        return "application/json", {"error": name, "message": detail, "code": status}

    def cloud(self, req):
        return 200, self.objects("ocloud")[0], {}

    def pool_resources(self, req):
        pool = req.match.group("pool")
        with self.state.lock:
            if pool not in self.state.inventory["resourcePool"]:
                raise HttpError(404, f"Resource pool not found: {pool}")
        items = self.objects("resource", lambda o: o["resourcePoolId"] == pool)
        return (200,) + self.shape_list(req, "resource", items)

    def shape_list(self, req, kind, items):
        def number(name, default, low, high):
            raw = req.q.get(name)
            if raw in (None, ""):
                return default
            try:
                n = int(raw)
            except ValueError:
                raise HttpError(400, f"{name} must be an integer")
            if n < low or (high is not None and n > high):
                raise HttpError(400, f"{name} out of range")
            return n
        offset = number("offset", 0, 0, None)
        limit = number("limit", 20, 1, 100)
        return {LIST_KEY[kind]: items[offset:offset + limit], "total": len(items),
                "_generation": self.state.generation}, {}

    # -- subscriptions -------------------------------------------------------------------------
    def validate_subscription(self, req, body, kind):
        u = urllib.parse.urlsplit(body["callback"])
        if u.scheme not in ("http", "https") or not u.hostname:
            raise HttpError(400, "callback must be an absolute http(s) URL")
        f = body.get("filter")
        if f is not None and (not isinstance(f, dict) or any(
                not isinstance(v, list) for v in f.values())):
            raise HttpError(400, "filter must be an object of id lists")

    def duplicate(self, body, kind):
        consumer = body.get("consumerSubscriptionId")
        return bool(consumer) and any(r.get("consumerSubscriptionId") == consumer
                                      for _, r in self.subscriptions_of(kind))

    def sub_view(self, record):
        out = super().sub_view(record)
        out.setdefault("createdAt", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return out

    def put_subscription(self, req):
        sid = req.match.group("sid")
        body = req.json()
        if "callback" in body:
            self.validate_subscription(req, body, "inventory")
        with self.state.lock:
            s = self.state.subscriptions.get(sid)
            if s is None:
                raise HttpError(404, f"Subscription not found: {sid}")
            for k in ("callback", "filter", "consumerSubscriptionId"):
                if k in body:
                    s["record"][k] = body[k]
            return 200, self.sub_view(s["record"]), {}

    # -- notifications -------------------------------------------------------------------------
    def object_ref(self, kind, obj):
        if kind == "resource":
            return f"{BASE}/resources/{obj['resourceId']}"
        if kind == "ocloud":
            return f"{BASE}/oCloudInfrastructure"
        key = {"resourcePool": "resourcePoolId", "resourceType": "resourceTypeId",
               "deploymentManager": "deploymentManagerId"}[kind]
        return f"{BASE}/{LIST_KEY[kind]}/{obj[key]}"

    def notifications(self, kind, op, prior, post, opts):
        if kind not in KIND_NAME:
            return []
        obj = post or prior
        out = []
        for sid, rec in self.subscriptions_of("inventory"):
            f = rec.get("filter") or {}
            skip = False
            for field, wanted in (("resourcePoolId", f.get("resourcePoolId")),
                                  ("resourceTypeId", f.get("resourceTypeId")),
                                  ("resourceId", f.get("resourceId"))):
                if wanted and obj.get(field) not in wanted:
                    skip = True
            if skip:
                continue
            event = f"o2ims.{KIND_NAME[kind]}.{EVENT[op]}"
            if opts.get("int_type"):
                event = {"create": 0, "modify": 1, "delete": 2}[op]
            body = {"subscriptionId": sid, "notificationEventType": event}
            if not opts.get("omit_object_ref"):
                body["objectRef"] = self.object_ref(kind, obj)
            body.update({"resourceTypeId": obj.get("resourceTypeId"),
                         "resourcePoolId": obj.get("resourcePoolId"),
                         "globalResourceId": obj.get("globalAssetId",
                                                     obj.get("resourceId",
                                                             obj.get("resourcePoolId"))),
                         "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "notificationId": str(uuid.uuid4()),
                         "callbackUrl": rec["callback"]})
            out.append((sid, body))
        return out

    def retry_policy(self, attempt, status, error):
        if status is not None and 200 <= status < 300:
            return None
        if attempt > 3:
            return None
        return 10 * 2 ** (attempt - 1)
