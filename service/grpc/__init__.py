"""The gRPC door: the Open Inference Protocol's GRPCInferenceService and grpc.health.v1."""
