#!/usr/bin/env python3
"""The LAN API's contract, checked by schemathesis against the real daemon, once per role.

Starts `sitegate demo` (the real daemon in TLS mode, a Modbus simulator on loopback, a signed
bundle with a viewer, a control-only user, a technician and an admin), logs in as each role,
writes a copy of docs/openapi.json whose free-string parameters (unit, point, command, grant id,
email, scope) are enums of the site's real names, and runs schemathesis with every check against
it, as each role in turn (admin last: it may revoke the others' grants). Fails on any failed check:
a 5xx, a status code or content type the document does not list, a response that violates its
schema. Prints the number of requests each role sent (from the daemon's own
`sitegate_http_requests_total`) and the status codes they got.

Usage: scripts/contract.py SITEGATE_BINARY ST_BINARY [OUT_DIR]
Bounds: SITEGATE_CONTRACT_EXAMPLES (default 25 examples per operation and phase) and
SITEGATE_CONTRACT_SECS (default 50 s per role, 4 roles).
"""

import copy
import json
import os
import pathlib
import queue
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
ROLES = ["viewer", "control-only", "technician", "admin"]


def fail(msg):
    print(f"contract: {msg}", file=sys.stderr)
    sys.exit(1)


def start_demo(binary, state):
    proc = subprocess.Popen(
        [binary, "demo", "--state-dir", str(state), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    info = {"users": {}}
    deadline = time.monotonic() + 60
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            fail("the demo did not start within 60 s")
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            continue
        if line is None:
            fail(f"the demo exited with {proc.wait()}")
        if m := re.match(r"\s+API:\s+(\S+)", line):
            info["base"] = m.group(1)
        elif m := re.match(r"\s+TLS cert:\s+(\S+)", line):
            info["cert"] = m.group(1)
        elif m := re.match(r"\s+(\S+)\s+(\S+@\S+)\s+password (\S+)$", line):
            info["users"][m.group(1)] = (m.group(2), m.group(3))
        elif line.startswith("Press Ctrl-C"):
            break
    missing = [r for r in ROLES if r not in info["users"]]
    if "base" not in info or "cert" not in info or missing:
        proc.kill()
        fail(f"the demo's banner lacks the API, the cert or users {missing}")
    return proc, info


class Api:
    def __init__(self, base, cert):
        self.base = base
        self.ctx = ssl.create_default_context(cafile=cert)

    def call(self, method, path, token=None, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if token:
            req.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, method, path, token=None, body=None, want=200):
        status, raw = self.call(method, path, token, body)
        if status != want:
            fail(f"{method} {path}: {status} {raw[:300]!r}")
        return json.loads(raw)

    def requests_by_status(self, token):
        """The daemon's own request counter, summed by status (excluding /metrics itself)."""
        _, raw = self.call("GET", "/metrics", token)
        out = {}
        pat = re.compile(r'^sitegate_http_requests_total\{route="([^"]*)",method="([^"]*)",status="(\d+)"\} (\d+)')
        for line in raw.decode().splitlines():
            if m := pat.match(line):
                route, method, status, n = m.groups()
                if route.endswith("/metrics"):
                    continue
                out[status] = out.get(status, 0) + int(n)
                if status.startswith("2"):
                    key = f"{method} {route.removeprefix('/api/v1')} {status}"
                    out[key] = out.get(key, 0) + int(n)
        return out


def enum_param(op, name, values):
    for p in op.get("parameters", []):
        if p.get("name") == name and p.get("in") == "path":
            p["schema"] = {"type": "string", "enum": sorted(set(values))}


def value_schema(point):
    """What a valid `value` of a writable point looks like (from its own description)."""
    if point.get("type") == "bool":
        if point.get("max") is not None and point["max"] < 1:
            return {"enum": [False, 0]}
        if point.get("min") is not None and point["min"] > 0:
            return {"enum": [True, 1]}
        return {"anyOf": [{"type": "boolean"}, {"enum": [0, 1]}]}
    labels = point.get("enum_labels") or []
    if labels:
        return {"enum": sorted({str(v["label"]) for v in labels}) + sorted({v["value"] for v in labels})}
    if "min" in point and "max" in point:
        return {"type": "number", "minimum": point["min"], "maximum": point["max"]}
    return {"type": "number"}


def contract_document(doc, base, names):
    """A copy of the document with the real names as enums, served from `base`."""
    d = copy.deepcopy(doc)
    d["servers"] = [{"url": base}]
    for path, ops in d["paths"].items():
        for method, op in ops.items():
            if not isinstance(op, dict):
                continue
            enum_param(op, "unit", names["units"])
            enum_param(op, "point", names["points"])
            enum_param(op, "command", names["commands"])
            enum_param(op, "id", names["grants"])
            enum_param(op, "key", names["lockouts"])
    # Delegations get the real scope names and emails (so they reach the engine, not just 403 and
    # 422 `unknown_user`). Access requests keep the document's scope: any well-formed id is
    # accepted there by design (the cloud resolves it), so the real names are no stricter limit.
    schemas = d["components"]["schemas"]
    # A write's `value` is any JSON in the document (its point decides): offer values valid for
    # some writable point, so that writes with the right point succeed.
    unique = {json.dumps(v, sort_keys=True): v for v in names["values"]}
    schemas["WriteRequest"]["properties"]["value"] = {"anyOf": list(unique.values())}
    # And one concrete operation per writable point, its `value` as that point takes it, so that
    # most schema-valid writes are ones the point accepts (and reach the simulator).
    template = d["paths"]["/units/{unit}/points/{point}"]["put"]
    for unit, point, value in names["writable"]:
        op = copy.deepcopy(template)
        op["operationId"] = f"writePoint-{unit}-{point}"
        op["parameters"] = [p for p in op.get("parameters", []) if p.get("in") != "path"]
        op["requestBody"]["content"]["application/json"]["schema"] = {
            "type": "object", "required": ["value"], "additionalProperties": False,
            "properties": {"value": value},
        }
        d["paths"][f"/units/{unit}/points/{point}"] = {"put": op}
    scope = copy.deepcopy(schemas["Scope"])
    for key, values in (("site", [names["site"]]), ("group", names["groups"]), ("unit", names["units"])):
        if values:
            scope["properties"][key] = {"type": "string", "enum": sorted(set(values))}
    schemas["DelegateScope"] = scope
    props = schemas["DelegateRequest"]["properties"]
    props["scope"] = {"$ref": "#/components/schemas/DelegateScope"}
    props["email"] = {**props["email"], "enum": sorted(set(names["emails"]))}
    return d


def main():
    if len(sys.argv) < 3:
        fail(__doc__)
    binary, st = (str(pathlib.Path(a).resolve()) for a in sys.argv[1:3])
    out = pathlib.Path(sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp(prefix="contract-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    examples = int(os.environ.get("SITEGATE_CONTRACT_EXAMPLES", "25"))
    secs = int(os.environ.get("SITEGATE_CONTRACT_SECS", "50"))
    state = out / "demo-state"
    proc, info = start_demo(binary, state)
    try:
        api = Api(info["base"], info["cert"])
        tokens = {}
        for role in ROLES:
            email, password = info["users"][role]
            tokens[role] = api.json("POST", "/session", body={"email": email, "password": password}, want=201)["token"]
        admin = tokens["admin"]
        units = api.json("GET", "/units", admin)["units"]
        names = {"site": None, "units": [], "points": [], "commands": [], "groups": [], "lockouts": ["no-such-lockout"], "values": [], "writable": [],
                 "emails": [e for e, _ in info["users"].values()] + ["nobody@demo.local"]}
        me = api.json("GET", "/me", admin)
        for g in me.get("grants", []):
            if "site" in g.get("scope", {}):
                names["site"] = g["scope"]["site"]
        for u in units:
            names["units"].append(u["id"])
            if u.get("group"):
                names["groups"].append(u["group"])
            detail = api.json("GET", f"/units/{u['id']}", admin)
            names["points"] += [p["name"] for p in detail.get("points", [])]
            names["values"] += [value_schema(p) for p in detail.get("points", []) if p.get("write")]
            names["writable"] += [(u["id"], p["name"], value_schema(p)) for p in detail.get("points", []) if p.get("write")]
            names["commands"] += [c["name"] if isinstance(c, dict) else c for c in detail.get("commands", [])]
        names["grants"] = [g["id"] for g in api.json("GET", "/grants", admin)["grants"]] + ["g-none"]
        for role in ROLES:
            names["grants"] += [g["id"] for g in api.json("GET", "/me", tokens[role]).get("grants", [])]
        if not (names["site"] and names["points"] and names["commands"]):
            fail(f"could not learn the site's names: {names}")
        doc = json.loads((ROOT / "docs" / "openapi.json").read_text())
        schema_path = out / "openapi.contract.json"
        schema_path.write_text(json.dumps(contract_document(doc, info["base"], names), indent=1))
        print(f"contract: names offered: {json.dumps(names)}")
        results = []
        for role in ROLES:
            before = api.requests_by_status(admin)
            cmd = [
                st, "--config-file", str(ROOT / "scripts" / "contract.toml"),
                "run", str(schema_path),
                "--url", info["base"],
                "-H", f"Authorization: Bearer {tokens[role]}",
                "--tls-verify", info["cert"],
                "--checks", "all",
                "--max-examples", str(examples),
                "--max-time", str(secs),
                "--rate-limit", "40/s",
                "--workers", "1",
                "--request-timeout", "20",
                # Logging out would end this run's own session.
                "--exclude-operation-id", "logout",
                "--continue-on-failure",
                "--generation-database", "none",
                "--report", "junit",
                "--report-junit-path", str(out / f"junit-{role}.xml"),
                "--no-color",
            ]
            print(f"== contract as {role}: {' '.join(c if 'Bearer' not in c else 'Authorization: Bearer ***' for c in cmd)}", flush=True)
            started = time.monotonic()
            env = {**os.environ, "SCHEMATHESIS_HOOKS": "contract_hooks", "PYTHONPATH": str(ROOT / "scripts")}
            rc = subprocess.call(cmd, env=env, cwd=out)
            took = time.monotonic() - started
            after = api.requests_by_status(admin)
            changed = {s: after.get(s, 0) - before.get(s, 0) for s in sorted(after) if after.get(s, 0) != before.get(s, 0)}
            delta = {s: n for s, n in changed.items() if " " not in s}
            successes = {s: n for s, n in changed.items() if " " in s}
            total = sum(delta.values())
            print(f"contract: {role}: successes by route: {successes}", flush=True)
            results.append((role, rc, total, delta, took))
            print(f"contract: {role}: exit {rc}, {total} requests in {took:.0f} s, by status {delta}", flush=True)
        print("contract summary:")
        for role, rc, total, delta, took in results:
            print(f"  {role:<13} {'ok' if rc == 0 else 'FAILED'} {total} requests {took:.0f} s {delta}")
        if any(rc != 0 for _, rc, _, _, _ in results):
            fail("schemathesis found a mismatch between docs/openapi.json and the daemon (see above)")
        server_errors = sum(n for _, _, _, d, _ in results for s, n in d.items() if s.startswith("5"))
        if server_errors:
            fail(f"the daemon answered {server_errors} requests with 5xx")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
