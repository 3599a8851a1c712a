// The gRPC contract against a running decoder (INTERNVL_TARGET=HOST:PORT). tests/integration/clients/
// test_node_client.py starts a tiny-checkpoint stack and runs these; by hand:
//   INTERNVL_TARGET=localhost:50052 npm test
// Optional: INTERNVL_TEST_IMAGE (an image file; default test/fixtures/gradient.png), INTERNVL_TEST_VIDEO (a video
// file: the frame-count test), INTERNVL_EXPECTED (JSON with the Python client's answers to the same requests),
// INTERNVL_TLS_TARGET + INTERNVL_TLS_CA/_CERT/_KEY + INTERNVL_TLS_TOKEN (a decoder with mutual TLS and that token).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import { InternVLClient, InternVLError, status } from "../src/index.js";

const TARGET = process.env.INTERNVL_TARGET;
const IMAGE = process.env.INTERNVL_TEST_IMAGE || new URL("./fixtures/gradient.png", import.meta.url).pathname;
const VIDEO = process.env.INTERNVL_TEST_VIDEO;
const EXPECTED = process.env.INTERNVL_EXPECTED ? JSON.parse(readFileSync(process.env.INTERNVL_EXPECTED, "utf8")) : {};
const N = 8; // new tokens per answer
const FINISHED = ["FINISH_REASON_STOP", "FINISH_REASON_LENGTH"];

// Keep in step with tests/integration/clients/test_node_client.py, which asks the Python client the same.
const TEXT_CHAT = [{ role: "user", content: [{ type: "text", text: "Write a haiku" }] }];
const imageChat = (part) => [{ role: "user", content: [part, { type: "text", text: "Please describe the image." }] }];

function assertSameAsPython(name, response) {
  if (EXPECTED[name]) {
    const why = `${name}: token ids differ from the Python client's`;
    assert.deepEqual(response.token_ids, EXPECTED[name].token_ids, why);
    assert.equal(response.text, EXPECTED[name].text);
  }
}

async function rejectsWith(promise, code) {
  await assert.rejects(promise, (err) => {
    assert.ok(err instanceof InternVLError, String(err));
    assert.equal(err.code, code, `expected ${code}, got ${err.codeName}: ${err.details}`);
    assert.equal(err.local, false);
    return true;
  });
}

const NO_TARGET = "INTERNVL_TARGET is not set: start a decoder and run INTERNVL_TARGET=HOST:PORT npm test";

describe(`the decoder at ${TARGET ?? "INTERNVL_TARGET"}`, { skip: TARGET ? false : NO_TARGET }, () => {
  let client;
  before(() => {
    client = new InternVLClient(TARGET, { deadlineMs: 120_000 });
  });
  after(() => client?.close());

  test("a text chat", async () => {
    const reply = await client.generate(TEXT_CHAT, { maxNewTokens: N }, { requestId: "node-text" });
    assert.ok(reply.token_ids.length > 0 && reply.token_ids.length <= N, `token_ids: ${reply.token_ids}`);
    assert.ok(FINISHED.includes(reply.finish_reason), reply.finish_reason);
    assert.equal(reply.usage.output_tokens, reply.token_ids.length);
    assert.ok(reply.usage.input_tokens > 0);
    assert.equal(reply.usage.image_tokens, 0);
    assert.equal(reply.request_id, "node-text");
    assert.ok(reply.model);
    assertSameAsPython("text", reply);
  });

  test("an image chat, by bytes and by path", async () => {
    const byBytes = await client.generate(imageChat({ type: "image", data: readFileSync(IMAGE) }), { maxNewTokens: N });
    assert.ok(byBytes.usage.image_tokens > 0);
    assert.ok(byBytes.usage.input_tokens > byBytes.usage.image_tokens);
    const byPath = await client.generate(imageChat({ type: "image", path: IMAGE }), { max_new_tokens: N });
    assert.deepEqual(byPath.token_ids, byBytes.token_ids);
    assert.equal(byPath.usage.image_tokens, byBytes.usage.image_tokens);
    assertSameAsPython("image", byBytes);
  });

  test("a video chat: numFrames reaches the server", { skip: VIDEO ? false : "set INTERNVL_TEST_VIDEO" }, async () => {
    const chat = (numFrames) => [
      { role: "user", content: [{ type: "video", path: VIDEO, numFrames }, { type: "text", text: "What happens?" }] },
    ];
    const [two, four] = await Promise.all([2, 4].map((n) => client.generate(chat(n), { maxNewTokens: 2 })));
    assert.ok(two.usage.image_tokens > 0);
    assert.equal(four.usage.image_tokens, 2 * two.usage.image_tokens);
  });

  test("a stream concatenates to the unary reply", async () => {
    const chat = imageChat({ type: "image", path: IMAGE });
    const whole = await client.generate(chat, { maxNewTokens: N });
    const deltas = [];
    for await (const delta of client.generateStream(chat, { maxNewTokens: N }, { requestId: "node-stream" })) {
      deltas.push(delta);
    }
    assert.ok(deltas.length > 0);
    assert.equal(deltas.map((d) => d.text).join(""), whole.text);
    assert.deepEqual(deltas.flatMap((d) => d.token_ids), whole.token_ids);
    for (const delta of deltas.slice(0, -1)) {
      assert.equal(delta.finish_reason, "FINISH_REASON_UNSPECIFIED");
      assert.equal(delta.usage, null);
    }
    const last = deltas.at(-1);
    assert.equal(last.finish_reason, whole.finish_reason);
    assert.deepEqual(last.usage, whole.usage);
    assert.ok(deltas.every((d) => d.request_id === "node-stream" && d.model === whole.model));
  });

  test("bad requests are INVALID_ARGUMENT from the server", async () => {
    const robot = [{ role: "robot", content: "Hello" }];
    await rejectsWith(client.generate(robot, { maxNewTokens: 2 }), status.INVALID_ARGUMENT);
    await rejectsWith(client.generate(TEXT_CHAT, { temperature: -1 }), status.INVALID_ARGUMENT);
    await rejectsWith(
      client.generate(imageChat({ type: "image", data: Buffer.from("not an image") }), { maxNewTokens: 2 }),
      status.INVALID_ARGUMENT,
    );
    const stream = client.generateStream(robot, { maxNewTokens: 2 });
    await rejectsWith(
      (async () => {
        for await (const _ of stream);
      })(),
      status.INVALID_ARGUMENT,
    );
  });

  test("a deadline that passes is DEADLINE_EXCEEDED", async () => {
    const sampling = { maxNewTokens: 64, ignoreEos: true };
    await rejectsWith(client.generate(TEXT_CHAT, sampling, { deadlineMs: 1 }), status.DEADLINE_EXCEEDED);
  });
});

const TLS = {
  target: process.env.INTERNVL_TLS_TARGET,
  tlsCa: process.env.INTERNVL_TLS_CA,
  tlsCert: process.env.INTERNVL_TLS_CERT,
  tlsKey: process.env.INTERNVL_TLS_KEY,
  token: process.env.INTERNVL_TLS_TOKEN,
};

const NO_TLS = "set INTERNVL_TLS_TARGET and INTERNVL_TLS_*";

test("mutual TLS and a bearer token", { skip: TLS.target ? false : NO_TLS }, async () => {
  const { target, token, ...tls } = TLS;
  const withToken = new InternVLClient(target, { ...tls, token, deadlineMs: 120_000 });
  const noToken = new InternVLClient(target, { ...tls, deadlineMs: 120_000 });
  const wrongToken = new InternVLClient(target, { ...tls, token: `${token}-not`, deadlineMs: 120_000 });
  try {
    const reply = await withToken.generate(TEXT_CHAT, { maxNewTokens: N });
    assertSameAsPython("text", reply);
    await rejectsWith(noToken.generate(TEXT_CHAT, { maxNewTokens: 2 }), status.UNAUTHENTICATED);
    await rejectsWith(wrongToken.generate(TEXT_CHAT, { maxNewTokens: 2 }), status.UNAUTHENTICATED);
  } finally {
    for (const client of [withToken, noToken, wrongToken]) client.close();
  }
});
