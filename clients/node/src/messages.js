// Hugging Face chat messages -> internvl.v1.Message / Part / Media objects (the shapes proto-loader takes).
import { readFile } from "node:fs/promises";
import grpc from "@grpc/grpc-js";

import { InternVLError } from "./errors.js";

function inputError(where, what) {
  return new InternVLError(grpc.status.INVALID_ARGUMENT, `${where}: ${what}`, { local: true });
}

function isBytes(value) {
  return value instanceof Uint8Array; // Buffer is a Uint8Array
}

// The bytes of a media part, from exactly one of: data, path, base64, or the part's own "image"/"video" key
// (a path or bytes, as in transformers' chat templates).
async function mediaBytes(part, where) {
  const sources = ["data", "path", "base64", part.type].filter((key) => part[key] !== undefined);
  if (sources.length !== 1) {
    throw inputError(where, `a ${part.type} part needs exactly one of data, path, base64, ${part.type}, media_id`);
  }
  const value = part[sources[0]];
  if (sources[0] === "base64") {
    return Buffer.from(value, "base64");
  }
  if (isBytes(value)) {
    return value;
  }
  if (typeof value === "string") {
    try {
      return await readFile(value);
    } catch (err) {
      throw inputError(where, `cannot read ${value}: ${err.message}`);
    }
  }
  throw inputError(where, `${sources[0]} must be a Buffer/Uint8Array or a file path`);
}

async function toPart(part, where) {
  if (typeof part === "string") {
    return { text: part };
  }
  if (part === null || typeof part !== "object") {
    throw inputError(where, "a part is an object {type, ...} or a string");
  }
  switch (part.type) {
    case "text":
      if (typeof part.text !== "string") {
        throw inputError(where, 'a text part needs a string "text"');
      }
      return { text: part.text };
    case "image":
    case "video": {
      const mediaId = part.media_id ?? part.mediaId;
      if (mediaId !== undefined) {
        return { media: { media_id: String(mediaId) } };
      }
      const data = await mediaBytes(part, where);
      if (part.type === "image") {
        return { media: { image: { data } } };
      }
      const numFrames = part.numFrames ?? part.num_frames ?? 0;
      if (!Number.isInteger(numFrames) || numFrames < 0) {
        throw inputError(where, "numFrames must be a whole number >= 0 (0: the server's default)");
      }
      return { media: { video: { data, num_frames: numFrames } } };
    }
    default:
      throw inputError(where, `unknown part type ${JSON.stringify(part.type)} (text, image or video)`);
  }
}

// [{role, content}] -> [Message]. content is a string or a list of parts. Roles are passed as given: the server
// is the one that checks them (INVALID_ARGUMENT for anything but system, user and assistant).
export async function toProtoMessages(messages) {
  if (!Array.isArray(messages)) {
    throw inputError("messages", "a list of {role, content} objects");
  }
  return Promise.all(
    messages.map(async (message, i) => {
      const where = `messages[${i}]`;
      if (message === null || typeof message !== "object" || typeof message.role !== "string") {
        throw inputError(where, 'a message is {role: "system"|"user"|"assistant", content}');
      }
      const content = typeof message.content === "string" ? [message.content] : message.content;
      if (!Array.isArray(content)) {
        throw inputError(where, "content is a string or a list of parts");
      }
      const parts = await Promise.all(content.map((part, j) => toPart(part, `${where}.content[${j}]`)));
      return { role: message.role, content: parts };
    }),
  );
}

// {maxNewTokens: 8} or {max_new_tokens: 8} -> SamplingParams, checked against the proto's field names.
export function toSamplingParams(sampling, fieldNames) {
  const out = {};
  for (const [key, value] of Object.entries(sampling ?? {})) {
    const name = key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    if (!fieldNames.has(name)) {
      throw new TypeError(`unknown sampling parameter ${key} (known: ${[...fieldNames].join(", ")})`);
    }
    if (value !== undefined && value !== null) {
      out[name] = value;
    }
  }
  return out;
}
