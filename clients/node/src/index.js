// @internvl-serve/client: the public names.
import grpc from "@grpc/grpc-js";

export { DEFAULT_PROTO_DIR, InternVLClient } from "./client.js";
export { InternVLError } from "./errors.js";
export { toProtoMessages, toSamplingParams } from "./messages.js";

// grpc.status.INVALID_ARGUMENT etc., to compare with err.code.
export const status = grpc.status;
