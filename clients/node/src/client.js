// InternVLClient: internvl.v1.GenerationService from Node.js, with the .proto files loaded at run time.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

import { InternVLError } from "./errors.js";
import { toProtoMessages, toSamplingParams } from "./messages.js";

// The repository's proto/ (clients/node/src -> ../../../proto); INTERNVL_PROTO_DIR or {protoDir} override it.
export const DEFAULT_PROTO_DIR = fileURLToPath(new URL("../../../proto/", import.meta.url));
const DEFAULT_DEADLINE_MS = 300_000;

// Field names as in the .proto (token_ids, finish_reason), enums as their names ("FINISH_REASON_STOP"),
// unset fields with their defaults (token_ids [], text ""), and uint64 as Number.
const LOADER_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

const loaded = new Map(); // protoDir -> {GenerationService, samplingFields}

function loadProtos(protoDir) {
  if (!loaded.has(protoDir)) {
    const definition = protoLoader.loadSync("internvl/v1/generation_service.proto", {
      ...LOADER_OPTIONS,
      includeDirs: [protoDir],
    });
    const samplingFields = new Set(definition["internvl.v1.SamplingParams"].type.field.map((f) => f.name));
    const { GenerationService } = grpc.loadPackageDefinition(definition).internvl.v1;
    loaded.set(protoDir, { GenerationService, samplingFields });
  }
  return loaded.get(protoDir);
}

function pem(value) {
  return typeof value === "string" ? readFileSync(value) : (value ?? null); // a path or the PEM bytes
}

export class InternVLClient {
  // target: "HOST:PORT" of the decoder. token: sent as `authorization: Bearer TOKEN`. tlsCa / tlsCert / tlsKey:
  // PEM (Buffer) or a file path; any of them switches to TLS (tlsCa alone: the system roots are replaced;
  // tlsCert + tlsKey: mutual TLS; tls: true alone: TLS with the system roots). deadlineMs: the default per-call
  // deadline (300 s). protoDir: where internvl/v1/*.proto live. channelOptions: extra grpc-js channel options.
  constructor(target, { token, tlsCa, tlsCert, tlsKey, tls, deadlineMs, protoDir, channelOptions } = {}) {
    if ((tlsCert === undefined) !== (tlsKey === undefined)) {
      throw new TypeError("tlsCert and tlsKey go together (mutual TLS)");
    }
    const useTls = tls ?? (tlsCa !== undefined || tlsCert !== undefined);
    const credentials = useTls
      ? grpc.credentials.createSsl(pem(tlsCa), pem(tlsKey), pem(tlsCert))
      : grpc.credentials.createInsecure();
    const { GenerationService, samplingFields } = loadProtos(
      protoDir ?? process.env.INTERNVL_PROTO_DIR ?? DEFAULT_PROTO_DIR,
    );
    this.target = target;
    this.deadlineMs = deadlineMs ?? DEFAULT_DEADLINE_MS;
    this._token = token;
    this._samplingFields = samplingFields;
    this._stub = new GenerationService(target, credentials, channelOptions ?? {});
  }

  async _request(messages, sampling, requestId) {
    return {
      messages: await toProtoMessages(messages),
      sampling: toSamplingParams(sampling, this._samplingFields),
      request_id: requestId ?? "",
    };
  }

  _callArgs(deadlineMs) {
    const metadata = new grpc.Metadata();
    if (this._token) {
      // Per-call metadata rather than call credentials: grpc-js refuses call credentials on insecure channels.
      metadata.set("authorization", `Bearer ${this._token}`);
    }
    return [metadata, { deadline: Date.now() + (deadlineMs ?? this.deadlineMs) }];
  }

  // The whole reply: a GenerateResponse object {text, token_ids, finish_reason, usage, request_id, model, logprobs}.
  // sampling: SamplingParams fields, snake_case or camelCase ({maxNewTokens: 16, temperature: 0.7, stop: [...]}).
  async generate(messages, sampling = {}, { deadlineMs, requestId } = {}) {
    const request = await this._request(messages, sampling, requestId);
    return new Promise((resolve, reject) => {
      this._stub.Generate(request, ...this._callArgs(deadlineMs), (err, response) =>
        err ? reject(InternVLError.fromGrpc(err)) : resolve(response),
      );
    });
  }

  // The reply as it is produced: an async iterator of GenerateStreamResponse objects (new text and token_ids each;
  // the last one has finish_reason and usage). Leaving the loop early cancels the call.
  async *generateStream(messages, sampling = {}, { deadlineMs, requestId } = {}) {
    const request = await this._request(messages, sampling, requestId);
    const call = this._stub.GenerateStream(request, ...this._callArgs(deadlineMs));
    let done = false;
    try {
      for await (const response of call) {
        yield response;
      }
      done = true;
    } catch (err) {
      done = true;
      throw InternVLError.fromGrpc(err);
    } finally {
      if (!done) {
        call.cancel();
      }
    }
  }

  close() {
    this._stub.close();
  }
}
