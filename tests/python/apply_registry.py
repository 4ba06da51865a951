#!/usr/bin/env python3
"""Writes to an lgsp registry with a standard gRPC client and tells outcomes apart.

What a client in another language relies on (proto/lgsp/v1/registry.proto,
the Registry service): the status code with its `lgsp-outcome` trailing
metadata says whether a write was applied, certainly not applied, or maybe
applied, and an idempotency key makes a retry of a maybe-applied write safe.
The stubs are generated from lgsp's proto files:

    python3 -m grpc_tools.protoc -I proto --python_out=STUBS \
        --grpc_python_out=STUBS proto/lgsp/v1/*.proto

Needs grpcio and grpcio-tools. Registers agency --code under an idempotency
key, sends the same write again under the same key, sends a compare-and-set
at a revision the record is not at, and a write to --closed (a port nothing
listens on). Prints one JSON object per write on standard output: the step,
the status code, `lgsp-outcome`, `lgsp-mod-revision`, the revision when
applied, and what the client concludes (applied, certainly not applied,
never sent, maybe applied).

Example:
    python3 tests/python/apply_registry.py --stubs STUBS --target localhost:7101 \
        --tls-dir /etc/lgsp-admin/tls --code 000.00.12.H62 --closed localhost:1
"""

import argparse
import json
import os
import sys


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stubs", required=True,
                        help="directory holding the generated lgsp/v1/*_pb2*.py")
    parser.add_argument("--target", required=True,
                        help="a registry server's client listener, HOST:PORT")
    parser.add_argument("--tls-dir", required=True,
                        help="directory with an admin cert.pem, key.pem and ca.pem")
    parser.add_argument("--code", required=True, help="the agency code to register")
    parser.add_argument("--closed", required=True,
                        help="HOST:PORT where nothing listens, for a write never sent")
    return parser.parse_args()


def conclude(code, outcome, connected):
    """What the client knows of a write from its status (the proto's table)."""
    if code == "OK":
        return "applied"
    if outcome in ("refused", "not-applied"):
        return "certainly not applied"
    if not connected:
        return "never sent"
    return "maybe applied"


def main():
    args = parse_args()
    sys.path.insert(0, args.stubs)
    import grpc
    from lgsp.v1 import catalog_pb2, registry_pb2, registry_pb2_grpc

    def read(name):
        with open(os.path.join(args.tls_dir, name), "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read("ca.pem"),
        private_key=read("key.pem"),
        certificate_chain=read("cert.pem"),
    )

    def put(expected=0):
        agency = catalog_pb2.Agency(code=args.code, name="Sở Tư pháp")
        return registry_pb2.Command(
            put=registry_pb2.CatalogRecord(agency=agency),
            expected_mod_revision=expected,
        )

    def write(step, target, command, key, connect_within=5.0):
        channel = grpc.secure_channel(target, creds)
        connected = True
        try:
            grpc.channel_ready_future(channel).result(timeout=connect_within)
        except grpc.FutureTimeoutError:
            connected = False
        stub = registry_pb2_grpc.RegistryStub(channel)
        result = {"step": step}
        try:
            reply = stub.Apply(
                registry_pb2.ApplyRequest(command=command, idempotency_key=key),
                timeout=10,
            )
            result.update(code="OK", revision=reply.revision)
        except grpc.RpcError as error:
            metadata = dict(error.trailing_metadata() or ())
            result.update(
                code=error.code().name,
                outcome=metadata.get("lgsp-outcome"),
                mod_revision=metadata.get("lgsp-mod-revision"),
            )
        finally:
            channel.close()
        result["conclusion"] = conclude(result["code"], result.get("outcome"), connected)
        print(json.dumps(result), flush=True)
        return result

    key = os.urandom(16)
    first = write("first", args.target, put(), key)
    write("again-same-key", args.target, put(), key)
    write("compare-and-set", args.target, put(first.get("revision", 0) + 100), os.urandom(16))
    write("closed-port", args.closed, put(), os.urandom(16), connect_within=1.0)


if __name__ == "__main__":
    main()
