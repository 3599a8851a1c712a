"""Python client library, CLI and the generated gRPC stubs (internvl_serve.clients)."""
