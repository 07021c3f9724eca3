"""The `pti` dialect: o-ran-sc/pti-o2 at 32eb967 (INF O2 Services, Swagger 2.0, inventory under
/o2ims-infrastructureInventory/v1).

Quirks kept: authentication only, no per-path roles; ProblemDetails as application/json with
`type` the request path, `title` the status phrase and `instance: []`; a default field mask
(here: `extensions` is hidden except on deployment managers, whose native_k8sapi profile is
shown) that `all_fields` with any value, even none, lifts; `fields` adds to the mask,
`exclude_fields` takes from it, `exclude_default=true` leaves the ids; pages of 30 selected by
`nextpage_opaque_marker` (1-based) with `X-Total-Count` and a `Link` header, 400 past the last
page; a subscription filter over `objectType` that is checked at create and means exclusion;
a duplicate (callback, filter, consumerSubscriptionId) is 409; no reachability check;
notifications have a string event type "0".."2", no notificationId, JSON-encoded partial
states, prior == post on modify, no objectRef on delete, and inventory deletes are never sent
by a mutation (use the control port's notify to force one); one POST plus 3 retries on 429 or
5xx or a failed connection."""

import json
import math
import time

from base import Dialect, phrase
from o2common import OPS, HttpError, parse_filter, select

INV = "/o2ims-infrastructureInventory"
PAGE = 30
PAGE_PARAM = "nextpage_opaque_marker"

OBJECT_TYPE = {"resource": "ResourceInfo", "resourceType": "ResourceTypeInfo",
               "resourcePool": "ResourcePoolInfo", "deploymentManager": "DeploymentManagerInfo",
               "ocloud": "CloudInfo"}

# get_notification_dict(): the partial states pti sends.
NOTIFY_FIELDS = {
    "resource": ["resourceId", "resourceTypeId", "resourcePoolId", "globalAssetId",
                 "description"],
    "resourcePool": ["resourcePoolId", "oCloudId", "globalLocationId", "name", "description"],
    "resourceType": ["resourceTypeId", "name", "vendor", "model", "version", "description"],
    "deploymentManager": ["deploymentManagerId", "name", "description", "oCloudId",
                          "serviceUri"],
    "ocloud": ["oCloudId", "globalCloudId", "name", "description", "serviceUri"],
}

ID_KEYS = {"resource": ["resourceId"], "resourcePool": ["resourcePoolId"],
           "resourceType": ["resourceTypeId"], "deploymentManager": ["deploymentManagerId"],
           "ocloud": ["oCloudId"], "subscription": ["subscriptionId"]}


class Pti(Dialect):
    NAME = "pti"
    BASE = INV + "/v1"
    DUPLICATE_STATUS = 409
    DROP = {"resourcePool": {"oCloudSiteId"}, "resource": {"tags", "groups"},
            "resourceType": {"alarmDictionaryId"}}

    def __init__(self):
        super().__init__()
        v = self.BASE
        self.add("GET", INV + "/api_versions", None, self.versions(INV))
        self.add("GET", v, None, self.get_item("ocloud", None, "oCloud"))
        self.add("GET", v + "/api_versions", None, self.versions(v))
        self.add("GET", v + "/deploymentManagers", None, self.get_list("deploymentManager"))
        self.add("GET", v + "/deploymentManagers/(?P<id>[^/]+)", None,
                 self.get_item("deploymentManager", "id", "deployment manager"))
        self.add("GET", v + "/subscriptions", None, self.list_subscriptions())
        self.add("POST", v + "/subscriptions", None, self.create_subscription())
        self.add("GET", v + "/subscriptions/(?P<sid>[^/]+)", None, self.get_subscription())
        self.add("DELETE", v + "/subscriptions/(?P<sid>[^/]+)", None,
                 self.delete_subscription())
        self.add("GET", v + "/resourceTypes", None, self.get_list("resourceType"))
        self.add("GET", v + "/resourceTypes/(?P<id>[^/]+)", None,
                 self.get_item("resourceType", "id", "resource type"))
        self.add("GET", v + "/resourcePools", None, self.get_list("resourcePool"))
        self.add("GET", v + "/resourcePools/(?P<id>[^/]+)", None,
                 self.get_item("resourcePool", "id", "resource pool"))
        self.add("GET", v + "/resourcePools/(?P<pool>[^/]+)/resources", None,
                 self.get_list("resource", lambda req: (
                     lambda o, p=req.match.group("pool"): o["resourcePoolId"] == p)))
        self.add("GET", v + "/resourcePools/(?P<pool>[^/]+)/resources/(?P<id>[^/]+)", None,
                 self.get_item("resource", "id", "resource"))

    def versions(self, prefix):
        def handler(req):
            return 200, {"uriPrefix": prefix, "apiVersions": [{"version": "1.0.0"}],
                         "_generation": self.state.generation}, {}
        return handler

    def get_item(self, kind, group, label, check=None):
        if group is not None:
            return super().get_item(kind, group, label, check)

        def handler(req):
            return (200,) + self.shape_item(req, kind, self.objects(kind)[0])
        return handler

    def error(self, status, detail, extra, req):
        return "application/json", {"type": req.path if req else "", "title": phrase(status),
                                    "status": status, "detail": detail, "instance": []}

    def render(self, kind, obj):
        out = super().render(kind, obj)
        if kind == "resourceType":
            with self.state.lock:
                d = self.state.inventory["alarmDictionary"].get(obj.get("alarmDictionaryId"))
            out["alarmDictionary"] = {k: v for k, v in (d or {}).items()
                                      if k != "resourceTypeId"}
        return out

    # -- field mask ----------------------------------------------------------------------------
    def mask(self, req, kind, obj):
        hidden = [] if kind in ("deploymentManager", "subscription") else [["extensions"]]
        q = req.q
        if "all_fields" in q:
            return obj
        if q.get("fields"):
            wanted = [p.strip().split("/") for p in q["fields"].split(",") if p.strip()]
            defaults = [[k] for k in obj if [k] not in hidden]
            return select(obj, defaults + wanted, None)
        if q.get("exclude_fields"):
            gone = [p.strip().split("/") for p in q["exclude_fields"].split(",") if p.strip()]
            return select(obj, None, hidden + gone)
        if (q.get("exclude_default") or "").strip().lower() == "true":
            return select(obj, [[k] for k in ID_KEYS.get(kind, [])], None)
        return select(obj, None, hidden)

    def shape_item(self, req, kind, obj):
        return self.mask(req, kind, obj), {}

    def shape_list(self, req, kind, items):
        known = set().union(*(set(o) for o in items)) if items else None
        items = self.apply_filter(req, items, known)
        raw = req.q.get(PAGE_PARAM)
        try:
            page = int(raw) if raw not in (None, "") else 1
        except ValueError:
            raise HttpError(400, f"{PAGE_PARAM} must be a page number, got {raw!r}")
        page = max(page, 1)
        count = len(items)
        total = math.ceil(count / PAGE) if count > PAGE else 1
        if page > total:
            raise HttpError(400, f"Page size {page} bad request.")
        headers = {"X-Total-Count": str(count)}
        shown = items[(page - 1) * PAGE: page * PAGE]
        if count:
            rest = "&".join(p for p in req.query_text.split("&")
                            if p and p.split("=")[0] != PAGE_PARAM)
            rest = rest + "&" if rest else ""
            links = []
            if page > 1:
                links.append(f'<{req.raw_path}?{rest}{PAGE_PARAM}=1>; rel="first"')
                links.append(f'<{req.raw_path}?{rest}{PAGE_PARAM}={page - 1}>; rel="prev"')
            if page < total:
                links.append(f'<{req.raw_path}?{rest}{PAGE_PARAM}={page + 1}>; rel="next"')
                links.append(f'<{req.raw_path}?{rest}{PAGE_PARAM}={total}>; rel="last"')
            if links:
                headers["Link"] = ",".join(links)
        return [self.mask(req, kind, o) for o in shown], headers

    # -- subscriptions -------------------------------------------------------------------------
    def validate_subscription(self, req, body, kind):
        text = body.get("filter") or ""
        if text:
            for op, path, values in self.parse_type_filter(text):
                if path != ["objectType"] or op not in ("eq", "neq", "in", "nin"):
                    raise HttpError(400, f"filter {text!r}: only objectType may be filtered")
                for v in values:
                    if v not in OBJECT_TYPE.values():
                        raise HttpError(400, f"filter {text!r}: unknown objectType {v}")

    @staticmethod
    def parse_type_filter(text):
        out = []
        for op, path, values in parse_filter(text.replace("[", "").replace("]", "")):
            vs = [x for v in values for x in v.split("|")]
            out.append((op, path, vs))
        return out

    def duplicate(self, body, kind):
        key = (body["callback"], body.get("filter"), body.get("consumerSubscriptionId"))
        return any((r.get("callback"), r.get("filter"), r.get("consumerSubscriptionId")) == key
                   for _, r in self.subscriptions_of(kind))

    def filtered_out(self, record, kind):
        """pti's filter says what NOT to report ("filter hit, skip")."""
        text = record.get("filter") or ""
        if not text:
            return False
        t = OBJECT_TYPE.get(kind)
        for op, _, values in self.parse_type_filter(text):
            hit = (t in values) if op in ("eq", "in") else (t not in values)
            if not hit:
                return False
        return True

    # -- notifications -------------------------------------------------------------------------
    def object_ref(self, kind, obj):
        v = self.BASE
        if kind == "ocloud":
            return v
        if kind == "resource":
            return f"{v}/resourcePools/{obj['resourcePoolId']}/resources/{obj['resourceId']}"
        return f"{v}/{self.SEGMENT[kind]}/{obj[ID_KEYS[kind][0]]}"

    def notifications(self, kind, op, prior, post, opts):
        if kind not in OBJECT_TYPE:
            return []
        if op == "delete" and not opts.get("forced"):
            return []  # pti's auditors never emit inventory deletes
        current = post or prior
        part = {k: current.get(k) for k in NOTIFY_FIELDS[kind]}
        encoded = json.dumps(part)
        event = OPS[op] if opts.get("int_type") else str(OPS[op])
        out = []
        for sid, rec in self.subscriptions_of("inventory"):
            if self.filtered_out(rec, kind):
                continue
            body = {"consumerSubscriptionId": rec.get("consumerSubscriptionId"),
                    "notificationEventType": event}
            if op != "delete" and not opts.get("omit_object_ref"):
                body["objectRef"] = self.object_ref(kind, current)
            body["updateTime"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            if op in ("modify", "delete"):
                body["priorObjectState"] = encoded  # on modify: the same current object
            if op in ("create", "modify"):
                body["postObjectState"] = encoded
            out.append((sid, body))
        return out

    def retry_policy(self, attempt, status, error):
        if attempt >= 4:
            return None
        if status is None or status == 429 or status >= 500:
            return 10
        return None
