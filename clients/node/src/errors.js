// One error type for everything a call can fail with: .code is the gRPC status code (grpc.status.*).
import grpc from "@grpc/grpc-js";

const NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

export class InternVLError extends Error {
  // code: a grpc.status value; details: the server's message; local: true when the client refused the input
  // before calling; metadata: the call's trailing metadata (server errors only).
  constructor(code, details, { local = false, metadata = undefined, cause = undefined } = {}) {
    super(`${NAMES[code] ?? code}: ${details}`, cause ? { cause } : undefined);
    this.name = "InternVLError";
    this.code = code;
    this.details = details;
    this.local = local;
    this.metadata = metadata;
  }

  get codeName() {
    return NAMES[this.code] ?? String(this.code);
  }

  static fromGrpc(err) {
    if (err instanceof InternVLError || typeof err?.code !== "number") {
      return err;
    }
    return new InternVLError(err.code, err.details ?? err.message, { metadata: err.metadata, cause: err });
  }
}
