// The request conversion alone (no server): chat messages -> Message/Part/Media, sampling keys.
import assert from "node:assert/strict";
import { test } from "node:test";

import { InternVLError, status, toProtoMessages, toSamplingParams } from "../src/index.js";

const FIXTURE = new URL("./fixtures/gradient.png", import.meta.url).pathname;

test("text, image and video parts become Parts", async () => {
  const data = Buffer.from([1, 2, 3]);
  const [message] = await toProtoMessages([
    {
      role: "user",
      content: [
        { type: "image", data },
        { type: "image", path: FIXTURE },
        { type: "image", media_id: "m-1" },
        { type: "video", data, numFrames: 4 },
        { type: "text", text: "What is this?" },
      ],
    },
  ]);
  assert.equal(message.role, "user");
  assert.deepEqual(message.content[0], { media: { image: { data } } });
  assert.equal(message.content[1].media.image.data.subarray(1, 4).toString(), "PNG");
  assert.deepEqual(message.content[2], { media: { media_id: "m-1" } });
  assert.deepEqual(message.content[3], { media: { video: { data, num_frames: 4 } } });
  assert.deepEqual(message.content[4], { text: "What is this?" });
  const [plain] = await toProtoMessages([{ role: "system", content: "Be brief." }]);
  assert.deepEqual(plain, { role: "system", content: [{ text: "Be brief." }] });
});

test("bad parts are INVALID_ARGUMENT before any call", async () => {
  for (const content of [
    [{ type: "audio", data: Buffer.from("x") }],
    [{ type: "image" }],
    [{ type: "image", data: Buffer.from("x"), path: FIXTURE }],
    [{ type: "image", path: "/no/such/file.png" }],
    [{ type: "video", data: Buffer.from("x"), numFrames: -1 }],
  ]) {
    await assert.rejects(toProtoMessages([{ role: "user", content }]), (err) => {
      assert.ok(err instanceof InternVLError, String(err));
      assert.equal(err.code, status.INVALID_ARGUMENT);
      assert.equal(err.local, true);
      return true;
    });
  }
});

test("sampling takes snake_case or camelCase proto field names, nothing else", () => {
  const fields = new Set(["max_new_tokens", "temperature", "seed"]);
  assert.deepEqual(toSamplingParams({ maxNewTokens: 8, temperature: 0, seed: undefined }, fields), {
    max_new_tokens: 8,
    temperature: 0,
  });
  assert.deepEqual(toSamplingParams({ max_new_tokens: 4 }, fields), { max_new_tokens: 4 });
  assert.throws(() => toSamplingParams({ maxTokens: 8 }, fields), TypeError);
});
