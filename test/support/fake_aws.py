"""A fake EC2 + STS + IMDSv2 + container-credentials endpoint for the Cluster.Strategy.EC2 tests.

Every signed request's SigV4 signature is recomputed with botocore (an implementation independent
of the one under test) from the credentials this fake issued, and compared: a wrong signature is
answered 401 AuthFailure, as EC2 does, and logged with sig_ok false.

Driven by its owner (test/support/fake_aws.ex) through stdin/stdout with {packet, 4} framing:
commands are JSON objects, replies are Erlang term text (parsed with erl_parse:parse_term, so no
JSON decoder is needed on the Elixir side). The process exits when stdin closes (its owner died).

  python fake_aws.py --cert server.crt --key server.key [--host 127.0.0.1]
  -> first reply: #{https => Port, http => Port}

Commands ({"cmd": ...}):
  config   - merge settings: instances, keys, region, web_identity, container_token, imds_role,
             imds_creds_ttl, sts_ttl, page_size, instance_id
  fault    - append to the fault queue: {"on": "ec2"|"sts"|"imds"|"container", "status": n,
             "code": "...", "body": "truncate"|"garbage"|..., "delay_ms": n, "pass": true}
  log      - the request log so far (and clear it with "clear": true)
"""

import argparse
import datetime
import hmac
import json
import os
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

LOCK = threading.Lock()
STATE = {
    "region": "eu-west-1",
    # access key id -> {"secret": ..., "token": ... or None}
    "keys": {},
    # [{"id": "i-1", "private_ip": "10.0.0.1", "public_ip": ..., "state": "running", "tags": {k: v}}]
    "instances": [],
    "page_size": 1000,
    "web_identity": None,  # {"token": ..., "role_arn": ...}
    "container_token": None,
    "imds_role": "cluster-role",
    "imds_creds_ttl": 3600,
    "sts_ttl": 3600,
    "instance_id": "i-self",
    "faults": [],
    "log": [],
    "imds_tokens": set(),
    "issued": 0,
}


def erl(v):
    """Erlang term text for JSON-like data."""
    if v is None:
        return "nil"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return "<<" + ",".join(str(b) for b in v.encode("utf-8")) + ">>"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(erl(x) for x in v) + "]"
    if isinstance(v, dict):
        return "#{" + ",".join(erl(str(k)) + " => " + erl(x) for k, x in v.items()) + "}"
    raise TypeError(repr(v))


def reply(term):
    data = (erl(term) + ".").encode("ascii")
    sys.stdout.buffer.write(struct.pack(">I", len(data)) + data)
    sys.stdout.buffer.flush()


def take_fault(kind):
    with LOCK:
        for i, f in enumerate(STATE["faults"]):
            if f.get("on", "ec2") == kind:
                return STATE["faults"].pop(i)
    return None


def issue_key(prefix, token=True):
    with LOCK:
        STATE["issued"] += 1
        n = STATE["issued"]
        ak = "%s%012d" % (prefix, n)
        entry = {"secret": "secret/%d+%s" % (n, os.urandom(6).hex()),
                 "token": ("token-%d-%s" % (n, os.urandom(8).hex())) if token else None}
        STATE["keys"][ak] = entry
    return ak, entry


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ec2_error(status, code, message):
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>%s</Code>'
            '<Message>%s</Message></Error></Errors><RequestID>req-1</RequestID></Response>'
            % (escape(code), escape(message)))
    return status, "text/xml;charset=UTF-8", body.encode()


def verify_sigv4(handler, body, service, log):
    """Recompute the signature with botocore. Returns None if it checks out, else a reason."""
    auth = handler.headers.get("Authorization")
    if not auth or not auth.startswith("AWS4-HMAC-SHA256 "):
        return "no SigV4 Authorization header"
    parts = {}
    for item in auth[len("AWS4-HMAC-SHA256 "):].split(","):
        k, _, v = item.strip().partition("=")
        parts[k] = v
    try:
        ak, date, region, svc, term = parts["Credential"].split("/")
        signed = parts["SignedHeaders"].split(";")
        given = parts["Signature"]
    except (KeyError, ValueError):
        return "malformed Authorization header"
    log["access_key"] = ak
    log["signed_headers"] = signed
    with LOCK:
        key = STATE["keys"].get(ak)
        want_region = STATE["region"]
    if key is None:
        return "unknown access key " + ak
    if term != "aws4_request" or svc != service or region != want_region:
        return "wrong credential scope %s/%s/%s" % (region, svc, term)
    amz_date = handler.headers.get("X-Amz-Date", "")
    if not amz_date.startswith(date):
        return "X-Amz-Date does not match the scope date"
    try:
        t = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "bad X-Amz-Date"
    if abs((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()) > 300:
        return "request time too skewed"
    token = handler.headers.get("X-Amz-Security-Token")
    if key["token"] is not None:
        if token != key["token"]:
            return "missing or wrong X-Amz-Security-Token"
        if "x-amz-security-token" not in signed:
            return "the session token is not signed"
    log["session_token"] = token is not None
    for required in ("host", "x-amz-date"):
        if required not in signed:
            return required + " is not signed"
    headers = {}
    for name in signed:
        value = handler.headers.get(name)
        if value is None:
            return "signed header %s is missing" % name
        headers[name] = value
    scheme = "https" if isinstance(handler.connection, ssl.SSLSocket) else "http"
    url = "%s://%s%s" % (scheme, headers["host"], handler.path)
    req = AWSRequest(method=handler.command, url=url, data=body, headers=headers)
    req.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(ak, key["secret"], key["token"]), service, region)
    canonical = signer.canonical_request(req)
    expected = signer.signature(signer.string_to_sign(req, canonical), req)
    if not hmac.compare_digest(expected, given):
        return "signature mismatch"
    return None


def matches(instance, filters, ids):
    if ids and instance["id"] not in ids:
        return False
    for name, values in filters.items():
        if name.startswith("tag:"):
            if instance.get("tags", {}).get(name[4:]) not in values:
                return False
        elif name == "instance-state-name":
            if instance.get("state", "running") not in values:
                return False
        else:
            return False
    return True


def instance_xml(i):
    tags = "".join("<item><key>%s</key><value>%s</value></item>" % (escape(k), escape(v))
                   for k, v in i.get("tags", {}).items())
    public = "<ipAddress>%s</ipAddress>" % i["public_ip"] if i.get("public_ip") else ""
    state = i.get("state", "running")
    return ("<item><instanceId>%s</instanceId><imageId>ami-1</imageId>"
            "<instanceState><code>16</code><name>%s</name></instanceState>"
            "<privateDnsName>ip.internal</privateDnsName>"
            "<privateIpAddress>%s</privateIpAddress>%s"
            "<networkInterfaceSet><item><privateIpAddress>192.0.2.250</privateIpAddress></item>"
            "</networkInterfaceSet><tagSet>%s</tagSet></item>"
            % (i["id"], state, i.get("private_ip", ""), public, tags))


def describe_instances(params, log):
    if params.get("Version") != "2016-11-15":
        return ec2_error(400, "InvalidParameterValue", "unsupported Version")
    filters = {}
    for k, v in params.items():
        if k.startswith("Filter.") and k.endswith(".Name"):
            n = k.split(".")[1]
            filters[v] = [params[x] for x in sorted(params)
                          if x.startswith("Filter.%s.Value." % n)]
    ids = [v for k, v in params.items() if k.startswith("InstanceId.")]
    log["filters"] = filters
    log["instance_ids"] = ids
    with LOCK:
        found = [i for i in STATE["instances"] if matches(i, filters, ids)]
        page_size = STATE["page_size"]
    if "MaxResults" in params:
        if ids:
            return ec2_error(400, "InvalidParameterCombination", "MaxResults with InstanceId")
        page_size = min(page_size, int(params["MaxResults"]))
    else:
        page_size = max(len(found), 1)
    start = 0
    token = params.get("NextToken")
    if token:
        if not token.startswith("tok-"):
            return ec2_error(400, "InvalidParameterValue", "bad NextToken")
        start = int(token[4:])
    page = found[start:start + page_size]
    log["page_start"] = start
    nxt = ("<nextToken>tok-%d</nextToken>" % (start + page_size)
           if start + page_size < len(found) else "")
    reservations = "".join("<item><reservationId>r-%s</reservationId><ownerId>1</ownerId>"
                           "<instancesSet>%s</instancesSet></item>" % (i["id"], instance_xml(i))
                           for i in page)
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstancesResponse '
            'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>req-1</requestId>'
            '<reservationSet>%s</reservationSet>%s</DescribeInstancesResponse>' % (reservations, nxt))
    return 200, "text/xml;charset=UTF-8", body.encode("utf-8")


def sts(params, handler, log):
    log["signed"] = handler.headers.get("Authorization") is not None
    if params.get("Action") != "AssumeRoleWithWebIdentity" or params.get("Version") != "2011-06-15":
        return 400, "text/xml", b"<ErrorResponse><Error><Code>InvalidAction</Code><Message>?</Message></Error></ErrorResponse>"
    with LOCK:
        wi = STATE["web_identity"] or {}
        ttl = STATE["sts_ttl"]
    log["role_session_name"] = params.get("RoleSessionName")
    log["role_arn"] = params.get("RoleArn")
    if params.get("WebIdentityToken") != wi.get("token") or params.get("RoleArn") != wi.get("role_arn"):
        body = ('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
                '<Code>InvalidIdentityToken</Code><Message>bad web identity token or role</Message></Error>'
                '</ErrorResponse>')
        return 400, "text/xml", body.encode()
    if not params.get("RoleSessionName"):
        return 400, "text/xml", b"<ErrorResponse><Error><Code>ValidationError</Code><Message>RoleSessionName</Message></Error></ErrorResponse>"
    ak, key = issue_key("ASIAWEB")
    log["issued"] = ak
    body = ('<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            '<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>%s</AccessKeyId>'
            '<SecretAccessKey>%s</SecretAccessKey><SessionToken>%s</SessionToken>'
            '<Expiration>%s</Expiration></Credentials></AssumeRoleWithWebIdentityResult>'
            '</AssumeRoleWithWebIdentityResponse>'
            % (ak, escape(key["secret"]), escape(key["token"]), iso(time.time() + ttl)))
    return 200, "text/xml", body.encode()


def json_creds(prefix, ttl, log):
    ak, key = issue_key(prefix)
    log["issued"] = ak
    return json.dumps({"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": ak,
                       "SecretAccessKey": key["secret"], "Token": key["token"],
                       "Expiration": iso(time.time() + ttl)}).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, ctype, body):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def handle_any(self):
        body = self.read_body()
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/latest/"):
            kind = "imds"
        elif path.startswith("/creds"):
            kind = "container"
        elif path.startswith("/sts"):
            kind = "sts"
        else:
            kind = "ec2"
        log = {"kind": kind, "method": self.command, "path": self.path,
               "tls": isinstance(self.connection, ssl.SSLSocket)}
        try:
            status, ctype, out = self.route(kind, path, body, log)
        except Exception as e:  # a bug in the fake: visible in the log
            log["exception"] = repr(e)
            status, ctype, out = 500, "text/plain", b"fake error"
        log["status"] = status
        with LOCK:
            STATE["log"].append(log)
        fault = log.get("fault") or {}
        if fault.get("delay_ms"):
            time.sleep(fault["delay_ms"] / 1000.0)
        self.send(status, ctype, out)

    do_GET = handle_any
    do_POST = handle_any
    do_PUT = handle_any

    def route(self, kind, path, body, log):
        fault = take_fault(kind)
        if fault and not fault.get("pass"):
            log["fault"] = fault
            if "status" in fault and fault["status"] != 200:
                if kind == "ec2":
                    return ec2_error(fault["status"], fault.get("code", "InternalError"),
                                     fault.get("message", "injected"))
                return fault["status"], "text/plain", b"injected"
        params = {}
        if self.command == "POST":
            try:
                params = dict(urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                                     strict_parsing=bool(body)))
            except (ValueError, UnicodeDecodeError):
                return ec2_error(400, "MalformedQueryString", "bad form body")
        if kind == "ec2":
            why = verify_sigv4(self, body, "ec2", log)
            log["sig_ok"] = why is None
            if why:
                log["sig_error"] = why
                return ec2_error(401, "AuthFailure", "AWS was not able to validate the provided "
                                 "access credentials (%s)" % why)
            if params.get("Action") != "DescribeInstances":
                return ec2_error(400, "InvalidAction", "unsupported action")
            status, ctype, out = describe_instances(params, log)
        elif kind == "sts":
            status, ctype, out = sts(params, self, log)
        elif kind == "imds":
            status, ctype, out = self.imds(path, log)
        else:
            with LOCK:
                want = STATE["container_token"]
                ttl = STATE["imds_creds_ttl"]
            log["authorization"] = self.headers.get("Authorization")
            if want is not None and self.headers.get("Authorization") != want:
                return 401, "text/plain", b"unauthorized"
            status, ctype, out = 200, "application/json", json_creds("ASIACTR", ttl, log)
        if fault and fault.get("body") and status == 200:
            log["fault"] = fault
            if fault["body"] == "truncate":
                out = out[: len(out) * 2 // 3]
            else:
                out = fault["body"].encode()
        elif fault and fault.get("delay_ms"):
            log["fault"] = fault
        return status, ctype, out

    def imds(self, path, log):
        if self.command == "PUT" and path == "/latest/api/token":
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            log["ttl"] = ttl
            if not ttl or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return 400, "text/plain", b"missing or bad TTL"
            token = "imds-" + os.urandom(8).hex()
            with LOCK:
                STATE["imds_tokens"].add(token)
            return 200, "text/plain", token.encode()
        token = self.headers.get("X-aws-ec2-metadata-token")
        with LOCK:
            ok = token in STATE["imds_tokens"]
            role = STATE["imds_role"]
            region = STATE["region"]
            iid = STATE["instance_id"]
            ttl = STATE["imds_creds_ttl"]
        if not ok:
            log["imdsv1"] = token is None
            return 401, "text/plain", b"IMDSv2 token required"
        if self.command != "GET":
            return 405, "text/plain", b""
        base = "/latest/meta-data/iam/security-credentials/"
        if path == "/latest/meta-data/instance-id":
            return 200, "text/plain", iid.encode()
        if path == "/latest/meta-data/placement/region":
            return 200, "text/plain", region.encode()
        if path == base:
            return 200, "text/plain", role.encode()
        if path == base + role:
            return 200, "text/plain", json_creds("ASIAIMDS", ttl, log)
        return 404, "text/plain", b"not found"


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--host", default="127.0.0.1")
    a = p.parse_args()
    https = Server((a.host, 0), Handler)
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        https.socket = ctx.wrap_socket(https.socket, server_side=True)
    http = Server((a.host, 0), Handler)
    for s in (https, http):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    reply({"https": https.server_address[1], "http": http.server_address[1]})
    stdin = sys.stdin.buffer
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            os._exit(0)
        (n,) = struct.unpack(">I", head)
        cmd = json.loads(stdin.read(n).decode("utf-8"))
        c = cmd.pop("cmd")
        with LOCK:
            if c == "config":
                for k, v in cmd.items():
                    STATE[k] = v
                out = "ok"
            elif c == "add_key":
                STATE["keys"][cmd["access_key"]] = {"secret": cmd["secret"], "token": cmd.get("token")}
                out = "ok"
            elif c == "fault":
                STATE["faults"].append(cmd)
                out = "ok"
            elif c == "log":
                out = list(STATE["log"])
                if cmd.get("clear"):
                    STATE["log"] = []
            else:
                out = "unknown command"
        reply(out)


if __name__ == "__main__":
    main()
