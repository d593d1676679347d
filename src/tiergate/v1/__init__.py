"""Generated code for the tiergate.v1 gRPC contract (scripts/gen_proto.py)."""
