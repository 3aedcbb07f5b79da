#!/usr/bin/env python3
"""Calls the provider over its unix socket with grpcio, as the Secrets Store CSI driver would.

The end-to-end tests use a client that is not built on hyper/h2, so that what the driver really
sends (e.g. the raw socket path as HTTP/2 :authority, as drivers up to v1.5.6 do) reaches the
provider. The stubs are generated from proto/v1alpha1/service.proto at start into a cache dir,
so no generated code is committed.

Prints ONE JSON line on stdout and exits 0, whether the RPC succeeded or not:
  {"ok": true, "response": {...}}
  {"ok": false, "code": "INVALID_ARGUMENT", "details": "..."}
A Version response has version, runtime_name and runtime_version; a Mount response has
object_version ([{id, version}]), error_code ("" when unset) and files ([{path, mode,
contents_b64}]). Exit codes other than 0 mean a bug in this client or its setup.

The --request file holds MountRequest fields: attributes, secrets, target_path, permission
(strings, sent as they are; a JSON object, list or number is serialised compactly with sorted
keys, as the driver's Go code does) and current_object_version ([{id, version}]).
"""

import argparse
import base64
import hashlib
import json
import os
import shutil
import sys
import tempfile
from importlib import metadata

import grpc
from grpc_tools import protoc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_ROOT = os.path.join(REPO, "proto")
PROTO_FILE = "v1alpha1/service.proto"
STRING_FIELDS = ("attributes", "secrets", "target_path", "permission")


def generated_stubs():
    """Compiles the proto once per (proto, grpcio-tools, protobuf) and imports the modules."""
    with open(os.path.join(PROTO_ROOT, PROTO_FILE), "rb") as f:
        proto = f.read()
    versions = "{} {}".format(metadata.version("grpcio-tools"), metadata.version("protobuf"))
    key = hashlib.sha256(proto + versions.encode()).hexdigest()[:16]
    cache = os.environ.get("DRIVER_CLIENT_CACHE") or os.path.join(
        tempfile.gettempdir(), "akeyless-csi-driver-client"
    )
    out = os.path.join(cache, key)
    if not os.path.isdir(out):
        os.makedirs(cache, exist_ok=True)
        # Compile into a private dir and rename it into place: safe with concurrent callers.
        scratch = tempfile.mkdtemp(prefix="protoc-", dir=cache)
        status = protoc.main(
            [
                "grpc_tools.protoc",
                "-I" + PROTO_ROOT,
                "--python_out=" + scratch,
                "--grpc_python_out=" + scratch,
                PROTO_FILE,
            ]
        )
        if status != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise SystemExit("driver_client: protoc failed on " + PROTO_FILE)
        try:
            os.rename(scratch, out)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)  # another caller won the race
    sys.path.insert(0, out)
    from v1alpha1 import service_pb2, service_pb2_grpc

    return service_pb2, service_pb2_grpc


def mount_request(pb2, path):
    with open(path, encoding="utf-8") as f:
        fields = json.load(f)
    if not isinstance(fields, dict):
        raise SystemExit("driver_client: --request must hold a JSON object")
    unknown = set(fields) - set(STRING_FIELDS) - {"current_object_version"}
    if unknown:
        raise SystemExit("driver_client: unknown MountRequest fields: " + ", ".join(sorted(unknown)))
    request = pb2.MountRequest()
    for name in STRING_FIELDS:
        value = fields.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            value = json.dumps(value, sort_keys=True, separators=(",", ":"))
        setattr(request, name, value)
    for version in fields.get("current_object_version") or []:
        request.current_object_version.add(id=version["id"], version=version["version"])
    return request


def call(pb2, stub, args, request):
    """One RPC; returns the JSON-ready result."""
    options = {"timeout": args.timeout, "wait_for_ready": args.wait_for_ready}
    try:
        if args.method == "Version":
            reply = stub.Version(pb2.VersionRequest(version="v1alpha1"), **options)
            response = {
                "version": reply.version,
                "runtime_name": reply.runtime_name,
                "runtime_version": reply.runtime_version,
            }
        else:
            reply = stub.Mount(request, **options)
            response = {
                "object_version": [{"id": v.id, "version": v.version} for v in reply.object_version],
                "error_code": reply.error.code,
                "files": [
                    {
                        "path": f.path,
                        "mode": f.mode,
                        "contents_b64": base64.b64encode(f.contents).decode("ascii"),
                    }
                    for f in reply.files
                ],
            }
        return {"ok": True, "response": response}
    except grpc.RpcError as error:
        return {"ok": False, "code": error.code().name, "details": error.details() or ""}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="path of the provider's unix socket")
    parser.add_argument(
        "--authority",
        default="localhost",
        help="HTTP/2 :authority to send: drivers <= v1.5.6 send the socket path, v1.6 localhost",
    )
    parser.add_argument("--method", required=True, choices=("Version", "Mount"))
    parser.add_argument("--request", help="JSON file with the MountRequest fields")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="make the call this many times on one channel (one HTTP/2 connection); the first "
        "failure, or else the last response, is printed",
    )
    parser.add_argument(
        "--wait-for-ready",
        action="store_true",
        help="wait for the socket like the driver's service config does, instead of failing fast",
    )
    args = parser.parse_args()

    pb2, pb2_grpc = generated_stubs()
    options = [("grpc.default_authority", args.authority)]
    with grpc.insecure_channel("unix:" + args.socket, options=options) as channel:
        stub = pb2_grpc.CSIDriverProviderStub(channel)
        request = None
        if args.method == "Mount":
            request = mount_request(pb2, args.request) if args.request else pb2.MountRequest()
        for _ in range(max(args.repeat, 1)):
            result = call(pb2, stub, args, request)
            if not result["ok"]:
                break
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
