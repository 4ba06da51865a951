#!/usr/bin/env python3
"""Calls an lgsp node's consumer listener with a standard gRPC client.

This is what an agency's own application written in Python does: it calls
its node's DataExchange.Call with the target service id, and the node finds
the provider and calls it. The stubs are generated from lgsp's proto files:

    python3 -m grpc_tools.protoc -I proto --python_out=STUBS \
        --grpc_python_out=STUBS proto/lgsp/v1/*.proto

Needs grpcio and grpcio-tools (pip install grpcio grpcio-tools). Prints the
response payload as JSON on standard output; on a gRPC error prints the
status code and message on standard error and exits with 1.

Example:
    python3 tests/python/call_node.py --stubs STUBS --target 127.0.0.1:7401 \
        --service 000.00.12.H62/ho-tich --op get --param key=001099012345
"""

import argparse
import json
import sys


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stubs", required=True,
                        help="directory holding the generated lgsp/v1/*_pb2*.py")
    parser.add_argument("--target", required=True,
                        help="the node's consumer listener, HOST:PORT")
    parser.add_argument("--service", required=True,
                        help="<agency-code>/<service-name>")
    parser.add_argument("--op", default="get", help="the operation")
    parser.add_argument("--param", action="append", default=[],
                        metavar="NAME=VALUE", help="a parameter; repeatable")
    parser.add_argument("--request-id", default="", help="the exchange's request id")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the answer")
    return parser.parse_args()


def main():
    args = parse_args()
    sys.path.insert(0, args.stubs)
    import grpc
    from lgsp.v1 import exchange_pb2, exchange_pb2_grpc

    parameters = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            sys.exit(f"--param {item!r} is not NAME=VALUE")
        parameters[name] = value

    # A proxy set in the environment must not capture a call to the local node.
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(args.target, options=options) as channel:
        stub = exchange_pb2_grpc.DataExchangeStub(channel)
        try:
            response = stub.Call(
                exchange_pb2.Envelope(
                    service_id=args.service,
                    operation=args.op,
                    parameters=parameters,
                    request_id=args.request_id,
                ),
                timeout=args.timeout,
            )
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    payload = json.loads(response.payload.decode("utf-8"))
    out = json.dumps(payload, ensure_ascii=False, indent=2) + "\n"
    # UTF-8 whatever the locale says: the records are Vietnamese.
    sys.stdout.buffer.write(out.encode("utf-8"))
    print(f"request id {response.request_id}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
