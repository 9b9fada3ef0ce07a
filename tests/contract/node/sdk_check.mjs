// Drives the official OpenAI Node SDK against a running gateway.
//
// Reads GATEWAY_BASE_URL (e.g. http://127.0.0.1:8080/v1) and GATEWAY_API_KEY
// from the environment, runs one call per SDK surface the gateway promises,
// and prints ONE JSON object with what it saw. tests/contract/test_openai_node.py
// judges the results; this script only reports. It exits non-zero when a call
// fails in a way the checks did not expect, with the error on stderr.

import OpenAI from "openai";

const baseURL = process.env.GATEWAY_BASE_URL;
const apiKey = process.env.GATEWAY_API_KEY;
if (!baseURL || !apiKey) {
  console.error("sdk_check.mjs: set GATEWAY_BASE_URL and GATEWAY_API_KEY");
  process.exit(2);
}

// No retries: a retried 401/404 would hide how the gateway answered the first time.
const options = { baseURL, maxRetries: 0, timeout: 20_000 };
const client = new OpenAI({ ...options, apiKey });
const messages = [{ role: "user", content: "Hello from Node!" }];

// Runs `call`, which must throw an instance of `cls`; returns what the error carried.
async function expectError(call, cls) {
  try {
    await call();
  } catch (err) {
    if (!(err instanceof cls)) throw err;
    return {
      class: err.constructor.name,
      status: err.status,
      message: err.error?.message ?? err.message,
      code: err.code ?? null,
      type: err.type ?? null,
    };
  }
  throw new Error(`expected ${cls.name}, but the call succeeded`);
}

const results = { sdkVersion: OpenAI.VERSION ?? null };

const chat = await client.chat.completions.create({ model: "demo/demo-chat", messages });
results.chat = {
  model: chat.model,
  content: chat.choices[0].message.content,
  finishReason: chat.choices[0].finish_reason,
};

const stream = await client.chat.completions.create({
  model: "demo/demo-chat",
  messages,
  stream: true,
});
let text = "";
let chunks = 0;
let finishReason = null;
for await (const chunk of stream) {
  chunks += 1;
  const choice = chunk.choices[0];
  if (choice) {
    text += choice.delta?.content ?? "";
    finishReason = choice.finish_reason ?? finishReason;
  }
}
results.stream = { text, chunks, finishReason };

const ids = [];
for await (const model of client.models.list()) ids.push(model.id);
results.models = ids;

const one = await client.models.retrieve("demo/demo-chat");
results.retrieve = { id: one.id, object: one.object };

const wrongKey = new OpenAI({ ...options, apiKey: "sk-wrong-key-from-node" });
results.wrongKey = await expectError(
  () => wrongKey.chat.completions.create({ model: "demo/demo-chat", messages }),
  OpenAI.AuthenticationError,
);

results.unknownModel = await expectError(
  () => client.chat.completions.create({ model: "no-such-provider/demo-chat", messages }),
  OpenAI.NotFoundError,
);

process.stdout.write(JSON.stringify(results) + "\n");
