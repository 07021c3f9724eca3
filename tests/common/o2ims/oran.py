"""The `oran` dialect: openshift-kni/oran-o2ims at e734c06 (inventory 2.0.0 under
/o2ims-infrastructureInventory/v2, monitoring 1.0.0 under /o2ims-infrastructureMonitoring/v1).

Quirks kept: roles per operation from the OpenAPI `security` table; ProblemDetails as
application/problem+json; `all_fields` parsed like Go's strconv.ParseBool (a valueless or bad
value is ignored); unknown field names in `filter`/`fields` are 400; no paging; a trailing slash
is stripped; callbacks must be https on the SMO host, not loopback, and answer a GET with 204;
a duplicate callback is 400 (not 409); notifications carry an integer event type, a uuid
`notificationId`, object states, and `objectRef` even on delete, with a Location's id being the
SHA-1 tracking uuid of its globalLocationId and a cluster resource's path being the singular
/clusterResource/ (the API's is /clusterResources/); delivery succeeds on a status <= 204, is
tried 5 times with a doubling delay (10 s scaled to 10 ms), and a refused connection is not
retried."""

import ipaddress
import socket
import time
import urllib.parse
import uuid

from base import Dialect
from control import mutate
from o2common import OPS, HttpError, select

INV = "/o2ims-infrastructureInventory"
MON = "/o2ims-infrastructureMonitoring"
CLUSTER = "/o2ims-infrastructureCluster"

ADMIN, READER, DEPLOYER = "o2ims-admin", "o2ims-reader", "o2ims-deployer"
SUBSCRIBER, MAINTAINER = "o2ims-subscriber", "o2ims-maintainer"
READ = {ADMIN, READER}
DM = {ADMIN, DEPLOYER}
SUB_READ = {ADMIN, READER, SUBSCRIBER}
SUB_WRITE = {ADMIN, SUBSCRIBER}
ALARM_WRITE = {ADMIN, MAINTAINER}
CONF_READ = {ADMIN, READER, MAINTAINER}

ALARM_EVENTS = {"NEW": 0, "CHANGE": 1, "CLEAR": 2, "ACKNOWLEDGE": 3}
PARSE_BOOL = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
              "0": False, "f": False, "F": False, "FALSE": False, "false": False,
              "False": False}


def tracking_uuid(key):
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, key))


class Oran(Dialect):
    NAME = "oran"
    BASE = INV + "/v2"
    DUPLICATE_STATUS = 400
    DROP = {"resourcePool": {"globalLocationId", "oCloudId", "location"},
            "resource": {"parentId"}}

    def __init__(self):
        super().__init__()
        v = self.BASE
        self.add("GET", INV + "/api_versions", READ, self.versions(INV))
        self.add("GET", v, READ, self.cloud_info)
        self.add("GET", v + "/api_versions", READ, self.versions(v))
        self.add("GET", v + "/deploymentManagers", DM, self.get_list("deploymentManager"))
        self.add("GET", v + "/deploymentManagers/(?P<id>[^/]+)", DM,
                 self.get_item("deploymentManager", "id", "deploymentManager"))
        self.add("GET", v + "/subscriptions", SUB_READ, self.list_subscriptions())
        self.add("POST", v + "/subscriptions", SUB_WRITE, self.create_subscription())
        self.add("GET", v + "/subscriptions/(?P<sid>[^/]+)", SUB_READ, self.get_subscription())
        self.add("DELETE", v + "/subscriptions/(?P<sid>[^/]+)", SUB_WRITE,
                 self.delete_subscription())
        self.add("GET", v + "/resourceTypes", READ, self.get_list("resourceType"))
        self.add("GET", v + "/resourceTypes/(?P<id>[^/]+)", READ,
                 self.get_item("resourceType", "id", "resourceType"))
        self.add("GET", v + "/resourceTypes/(?P<id>[^/]+)/alarmDictionary", READ,
                 self.type_dictionary)
        self.add("GET", v + "/resourcePools", READ, self.get_list("resourcePool"))
        self.add("GET", v + "/resourcePools/(?P<id>[^/]+)", READ,
                 self.get_item("resourcePool", "id", "resourcePool"))
        self.add("GET", v + "/resourcePools/(?P<pool>[^/]+)/resources", READ, self.resources)
        self.add("GET", v + "/resourcePools/(?P<pool>[^/]+)/resources/(?P<id>[^/]+)", READ,
                 self.get_item("resource", "id", "resource", self.pool_exists))
        self.add("GET", v + "/alarmDictionaries", READ, self.get_list("alarmDictionary"))
        self.add("GET", v + "/alarmDictionaries/(?P<id>[^/]+)", READ,
                 self.get_item("alarmDictionary", "id", "alarmDictionary"))
        self.add("GET", v + "/locations", READ, self.get_list("location"))
        self.add("GET", v + "/locations/(?P<id>[^/]+)", READ,
                 self.get_item("location", "id", "location"))
        self.add("GET", v + "/oCloudSites", READ, self.get_list("oCloudSite"))
        self.add("GET", v + "/oCloudSites/(?P<id>[^/]+)", READ,
                 self.get_item("oCloudSite", "id", "oCloudSite"))
        c = CLUSTER + "/v1"
        self.add("GET", c + "/clusterResources", READ, self.get_list("clusterResource"))
        self.add("GET", c + "/clusterResources/(?P<id>[^/]+)", READ,
                 self.get_item("clusterResource", "id", "clusterResource"))
        m = MON + "/v1"
        self.add("GET", MON + "/api_versions", READ, self.versions(MON, "1.0.0"))
        self.add("GET", m + "/api_versions", READ, self.versions(m, "1.0.0"))
        self.add("GET", m + "/alarms", READ, self.get_list("alarm"))
        self.add("GET", m + "/alarms/(?P<id>[^/]+)", READ,
                 self.get_item("alarm", "id", "alarm"))
        self.add("PATCH", m + "/alarms/(?P<id>[^/]+)", ALARM_WRITE, self.patch_alarm)
        self.add("GET", m + "/alarmServiceConfiguration", CONF_READ, self.get_config)
        self.add("PUT", m + "/alarmServiceConfiguration", ALARM_WRITE, self.put_config)
        self.add("PATCH", m + "/alarmServiceConfiguration", ALARM_WRITE, self.patch_config)
        self.add("GET", m + "/alarmSubscriptions", READ, self.list_subscriptions("alarm"))
        self.add("POST", m + "/alarmSubscriptions", SUB_WRITE,
                 self.create_subscription("alarm", "alarmSubscriptionId"))
        self.add("GET", m + "/alarmSubscriptions/(?P<sid>[^/]+)", READ,
                 self.get_subscription("alarm"))
        self.add("DELETE", m + "/alarmSubscriptions/(?P<sid>[^/]+)", SUB_WRITE,
                 self.delete_subscription("alarm"))

    # -- GET handlers --------------------------------------------------------------------------
    def versions(self, prefix, version="2.0.0"):
        def handler(req):
            return 200, {"uriPrefix": prefix, "apiVersions": [{"version": version}],
                         "_generation": self.state.generation}, {}
        return handler

    def cloud_info(self, req):
        obj = self.objects("ocloud")[0]
        include, exclude = self.selection(req, set(obj))
        return 200, self.project(obj, include, exclude), {}

    def pool_exists(self, req):
        pool = req.match.group("pool")
        with self.state.lock:
            if pool not in self.state.inventory["resourcePool"]:
                raise HttpError(404, "requested resourcePool not found",
                                {"resourcePoolId": pool})

    def resources(self, req):
        self.pool_exists(req)
        pool = req.match.group("pool")
        items = self.objects("resource", lambda o: o["resourcePoolId"] == pool)
        return (200,) + self.shape_list(req, "resource", items)

    def type_dictionary(self, req):
        t = self.one("resourceType", req.match.group("id"), "resourceType")
        return 200, self.one("alarmDictionary", t["alarmDictionaryId"], "alarmDictionary"), {}

    def project(self, obj, include, exclude):
        return select(obj, include, exclude)

    def shape_list(self, req, kind, items):
        # ParseBool: a valueless `?all_fields` or a bad value is ignored, as in options.go.
        _ = PARSE_BOOL.get(req.q.get("all_fields") or "", False)
        known = set().union(*(set(o) for o in items)) if items else None
        items = self.apply_filter(req, items, known)
        include, exclude = self.selection(req, known)
        return [self.project(o, include, exclude) for o in items], {}

    # -- monitoring writes ----------------------------------------------------------------------
    def patch_alarm(self, req):
        body = req.json()
        extra = set(body) - {"alarmAcknowledged", "perceivedSeverity"}
        if extra or not body:
            raise HttpError(400, f"only alarmAcknowledged and perceivedSeverity may change, "
                                 f"got {sorted(body)}")
        aid = req.match.group("id")
        fields = dict(body)
        if body.get("alarmAcknowledged") is True:
            fields["alarmAcknowledgedTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self.state.lock:
            if aid not in self.state.inventory["alarm"]:
                raise HttpError(404, "requested alarm not found", {"alarmEventRecordId": aid})
        mutate(self.state, {"kind": "alarm", "id": aid, "op": "modify", "fields": fields})
        return 200, body, {}

    def get_config(self, req):
        with self.state.lock:
            out = dict(self.state.alarm_config)
            out["_generation"] = self.state.generation
        return 200, out, {}

    def put_config(self, req):
        body = req.json()
        if not isinstance(body.get("retentionPeriod"), int) or body["retentionPeriod"] < 1:
            raise HttpError(400, "retentionPeriod must be an integer >= 1")
        with self.state.lock:
            self.state.alarm_config = {"retentionPeriod": body["retentionPeriod"],
                                       "extensions": body.get("extensions", {})}
            self.state.generation += 1
        return self.get_config(req)

    def patch_config(self, req):
        body = req.json()
        if "retentionPeriod" in body and (not isinstance(body["retentionPeriod"], int)
                                          or body["retentionPeriod"] < 1):
            raise HttpError(400, "retentionPeriod must be an integer >= 1")
        with self.state.lock:
            self.state.alarm_config.update({k: v for k, v in body.items()
                                            if k in ("retentionPeriod", "extensions")})
            self.state.generation += 1
        return self.get_config(req)

    # -- subscriptions -------------------------------------------------------------------------
    def validate_subscription(self, req, body, kind):
        if kind == "alarm" and body.get("filter") not in (None, *ALARM_EVENTS):
            raise HttpError(400, "filter must be one of NEW, CHANGE, CLEAR, ACKNOWLEDGE")
        consumer = body.get("consumerSubscriptionId")
        args = self.state.args
        try:
            u = urllib.parse.urlsplit(body["callback"])
            ok = u.scheme == "https" or (u.scheme == "http" and args.allow_http)
            ok = ok and bool(u.hostname) and args.smo_host is not None \
                and u.hostname == args.smo_host
            if ok and not args.allow_loopback:
                for info in socket.getaddrinfo(u.hostname, u.port or 443):
                    ip = ipaddress.ip_address(info[4][0].split("%")[0])
                    if ip.is_loopback or ip.is_link_local or ip in ipaddress.ip_network(
                            "0.0.0.0/8"):
                        ok = False
        except (ValueError, OSError):
            ok = False
        if not ok:
            raise HttpError(400, "callback URL validation failed",
                            {"consumerSubscriptionId": consumer or ""})
        self.reachable(body["callback"], consumer)

    # -- notifications -------------------------------------------------------------------------
    def object_ref(self, kind, obj):
        v = self.BASE
        oid = obj.get({"resourcePool": "resourcePoolId", "resource": "resourceId",
                       "resourceType": "resourceTypeId",
                       "deploymentManager": "deploymentManagerId",
                       "oCloudSite": "oCloudSiteId", "alarmDictionary": "alarmDictionaryId",
                       "alarm": "alarmEventRecordId"}.get(kind, ""), "")
        if kind == "resource":
            return f"{v}/resourcePools/{obj['resourcePoolId']}/resources/{oid}"
        if kind == "location":
            return f"{v}/locations/{tracking_uuid(obj['globalLocationId'])}"
        if kind == "ocloud":
            return v
        if kind == "alarm":
            return f"{MON}/v1/alarms/{oid}"
        if kind == "clusterResource":
            # constants.go: ClusterResourcePath is "/clusterResource", the API's is plural.
            return f"{CLUSTER}/v1/clusterResource/{obj['clusterResourceId']}"
        return f"{v}/{self.SEGMENT[kind]}/{oid}"

    def state_of(self, kind, obj):
        if obj is None:
            return None
        out = {k: v for k, v in obj.items() if k not in self.DROP.get(kind, ())}
        if kind == "deploymentManager":
            # DeploymentManagerRedactedConverter: no credentials in notifications.
            ext = dict(out.get("extensions") or {})
            ext.pop("profileData", None)
            out["extensions"] = ext
        return out

    def notifications(self, kind, op, prior, post, opts):
        obj = post or prior
        ref = self.object_ref(kind, obj)
        event = OPS[op] if opts.get("int_type", True) else str(OPS[op])
        if kind == "alarm":
            return self.alarm_notifications(op, obj, ref, opts)
        out = []
        for sid, rec in self.subscriptions_of("inventory"):
            body = {"notificationId": str(uuid.uuid4())}
            if rec.get("consumerSubscriptionId"):
                body["consumerSubscriptionId"] = rec["consumerSubscriptionId"]
            body["notificationEventType"] = event
            if not opts.get("omit_object_ref"):
                body["objectRef"] = ref
            if op in ("modify", "delete"):
                body["priorObjectState"] = self.state_of(kind, prior)
            if op in ("create", "modify"):
                body["postObjectState"] = self.state_of(kind, post)
            out.append((sid, body))
        return out

    def alarm_notifications(self, op, alarm, ref, opts):
        if op == "create":
            event = 0
        elif op == "delete" or alarm.get("perceivedSeverity") == 5:
            event = 2
        elif alarm.get("alarmAcknowledged"):
            event = 3
        else:
            event = 1
        out = []
        with self.state.lock:
            cloud = next(iter(self.state.inventory["ocloud"].values()))["globalCloudId"]
        for sid, rec in self.subscriptions_of("alarm"):
            if rec.get("filter") is not None and ALARM_EVENTS.get(rec["filter"]) == event:
                continue  # the filter names the event type NOT to deliver
            body = {"globalCloudID": cloud, "notificationEventType": event,
                    "alarmEventRecordId": alarm["alarmEventRecordId"],
                    "resourceTypeID": alarm.get("resourceTypeID"),
                    "resourceID": alarm.get("resourceID"),
                    "alarmDefinitionID": alarm.get("alarmDefinitionID"),
                    "probableCauseID": alarm.get("probableCauseID"),
                    "alarmRaisedTime": alarm.get("alarmRaisedTime"),
                    "alarmChangedTime": alarm.get("alarmChangedTime"),
                    "alarmAcknowledgeTime": alarm.get("alarmAcknowledgedTime"),
                    "alarmAcknowledged": alarm.get("alarmAcknowledged", False),
                    "perceivedSeverity": alarm.get("perceivedSeverity"),
                    "extensions": alarm.get("extensions", {})}
            if rec.get("consumerSubscriptionId"):
                body["consumerSubscriptionId"] = rec["consumerSubscriptionId"]
            if not opts.get("omit_object_ref"):
                body["objectRef"] = ref
            out.append((sid, body))
        return out

    def retry_policy(self, attempt, status, error):
        if status is not None and status <= 204:
            return None
        if error in ("refused", "dns"):
            return None
        if attempt >= 5:
            return None
        return 10 * 2 ** (attempt - 1)

