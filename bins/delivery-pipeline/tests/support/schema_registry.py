"""A small Schema Registry for tests: the REST endpoints Confluent's serializers and the
pipeline's client call, and nothing else (no Confluent or Apicurio registry can be installed
here).

    python3 schema_registry.py --port P --state FILE [--auth USER:PASSWORD] [--cert PEM --key PEM]

- POST /subjects/{subject}/versions      register (the same schema keeps its id)
- POST /subjects/{subject}               look a schema up in a subject
- GET  /schemas/ids/{id}                 a schema by id (no schemaType for Avro, as Confluent)
- GET  /subjects/{subject}/versions/{v}  a version, or `latest`
- GET  /_requests                        how often each path was asked for (test-only)

Everything, the request counts included, is kept in FILE and read back at start: the test
kills the process (SIGKILL) to take the registry down and starts it again on the same port.
With --auth, every request must carry that user and password (HTTP basic). With --cert and
--key it speaks only HTTPS.
"""

import argparse
import base64
import json
import os
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LOCK = threading.Lock()


class State:
    def __init__(self, path):
        self.path = path
        self.schemas = []  # id - 1 -> {"schema", "schemaType", "references"}
        self.subjects = {}  # subject -> [id, ...] (version - 1 -> id)
        self.requests = {}  # "GET /schemas/ids/1" -> count
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            self.schemas, self.subjects, self.requests = saved["schemas"], saved["subjects"], saved["requests"]

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"schemas": self.schemas, "subjects": self.subjects, "requests": self.requests}, f)
        os.replace(tmp, self.path)

    def register(self, subject, body):
        schema = {
            "schema": body["schema"],
            "schemaType": body.get("schemaType", "AVRO"),
            "references": body.get("references") or [],
        }
        if schema in self.schemas:
            schema_id = self.schemas.index(schema) + 1
        else:
            self.schemas.append(schema)
            schema_id = len(self.schemas)
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id, versions.index(schema_id) + 1

    def by_id(self, schema_id):
        if 1 <= schema_id <= len(self.schemas):
            return self.schemas[schema_id - 1]
        return None


def answer(schema, **extra):
    out = {"schema": schema["schema"], "references": schema["references"], **extra}
    if schema["schemaType"] != "AVRO":
        out["schemaType"] = schema["schemaType"]
    return out


class Handler(BaseHTTPRequestHandler):
    state = None
    auth = None

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def not_found(self, code, message):
        self.reply(404, {"error_code": code, "message": message})

    def authorised(self):
        if self.auth is None:
            return True
        expected = "Basic " + base64.b64encode(self.auth.encode()).decode()
        if self.headers.get("Authorization") == expected:
            return True
        self.reply(401, {"error_code": 401, "message": "Unauthorized"})
        return False

    def count(self, path):
        key = f"{self.command} {path}"
        self.state.requests[key] = self.state.requests.get(key, 0) + 1

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/_requests":
            with LOCK:
                return self.reply(200, self.state.requests)
        if not self.authorised():
            return
        with LOCK:
            self.count(path)
            self.state.save()
            m = re.fullmatch(r"/schemas/ids/(\d+)", path)
            if m:
                schema = self.state.by_id(int(m.group(1)))
                if schema is None:
                    return self.not_found(40403, f"Schema {m.group(1)} not found")
                return self.reply(200, answer(schema))
            m = re.fullmatch(r"/subjects/([^/]+)/versions/([^/]+)", path)
            if m:
                subject, version = unquote(m.group(1)), m.group(2)
                versions = self.state.subjects.get(subject)
                if not versions:
                    return self.not_found(40401, f"Subject '{subject}' not found.")
                index = len(versions) if version == "latest" else int(version)
                if not 1 <= index <= len(versions):
                    return self.not_found(40402, f"Version {version} not found.")
                schema_id = versions[index - 1]
                return self.reply(
                    200,
                    answer(self.state.by_id(schema_id), subject=subject, id=schema_id, version=index),
                )
            return self.not_found(404, f"no route {path}")

    def do_POST(self):
        path = urlsplit(self.path).path
        if not self.authorised():
            return
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        with LOCK:
            self.count(path)
            m = re.fullmatch(r"/subjects/([^/]+)/versions", path)
            if m:
                schema_id, version = self.state.register(unquote(m.group(1)), body)
                self.state.save()
                return self.reply(200, {"id": schema_id, "version": version})
            m = re.fullmatch(r"/subjects/([^/]+)", path)
            if m:
                subject = unquote(m.group(1))
                wanted = {
                    "schema": body["schema"],
                    "schemaType": body.get("schemaType", "AVRO"),
                    "references": body.get("references") or [],
                }
                for version, schema_id in enumerate(self.state.subjects.get(subject, []), start=1):
                    if self.state.by_id(schema_id) == wanted:
                        self.state.save()
                        return self.reply(
                            200, answer(wanted, subject=subject, id=schema_id, version=version)
                        )
                self.state.save()
                return self.not_found(40403, "Schema not found")
            return self.not_found(404, f"no route {path}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--auth")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    Handler.state = State(args.state)
    Handler.auth = args.auth
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
