"""grpc.health.v1 over mutual TLS, for kubelet exec probes (kubelet's own gRPC probe speaks plaintext only).

    python tls_health.py PORT [SERVICE]      exit 0 when localhost:PORT says SERVING, 1 otherwise

It dials localhost with the encoder pod's own TLS files, from the variables the encoder reads:
INTERNVL_TLS_CLIENT_CA (the CA that signs the encoders' and the decoders' certificates) verifies the server,
and INTERNVL_TLS_CERT / INTERNVL_TLS_KEY are shown as the client certificate, so the encoder's certificate
must carry the name localhost and clientAuth (deploy/kubernetes/create-secrets.sh makes it so). Health needs
no token. Mounted from a ConfigMap by components/tls-and-tokens.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port, service = int(argv[0]), argv[1] if len(argv) > 1 else ""

    def read(variable: str) -> bytes:
        with open(os.environ[variable], "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("INTERNVL_TLS_CLIENT_CA"),
        private_key=read("INTERNVL_TLS_KEY"),
        certificate_chain=read("INTERNVL_TLS_CERT"),
    )
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
        except grpc.RpcError as exc:
            print(f"localhost:{port} {service}: UNREACHABLE: {exc.code().name}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"localhost:{port} {service}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
