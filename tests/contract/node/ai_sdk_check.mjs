// Drives the Vercel AI SDK and the OpenAI Node SDK's Responses API against
// an OpenAI-compatible server (the demo upstream, or the gateway in front of it).
//
// Reads GATEWAY_BASE_URL (e.g. http://127.0.0.1:8081/v1), GATEWAY_API_KEY and
// GATEWAY_MODEL (`demo-chat` straight at the demo, `demo/demo-chat` through
// the gateway) from the environment, and prints ONE JSON object with what it
// saw; the pytest that runs it judges. Exits non-zero, with the error on
// stderr, when a call fails.

import { createOpenAI } from "@ai-sdk/openai";
import { jsonSchema, stepCountIs, streamText, tool } from "ai";
import OpenAI from "openai";

const baseURL = process.env.GATEWAY_BASE_URL;
const apiKey = process.env.GATEWAY_API_KEY;
const model = process.env.GATEWAY_MODEL ?? "demo-chat";
if (!baseURL || !apiKey) {
  console.error("ai_sdk_check.mjs: set GATEWAY_BASE_URL and GATEWAY_API_KEY");
  process.exit(2);
}

const results = {};

// The AI SDK's `openai(id)` is its Responses API model.
const provider = createOpenAI({ baseURL, apiKey });

const streamed = streamText({
  model: provider(model),
  prompt: "Hello from the AI SDK!",
  maxRetries: 0,
});
const pieces = [];
for await (const piece of streamed.textStream) pieces.push(piece);
const usage = await streamed.usage;
results.aiStream = {
  text: pieces.join(""),
  pieces: pieces.length,
  finishReason: await streamed.finishReason,
  inputTokens: usage.inputTokens ?? null,
  outputTokens: usage.outputTokens ?? null,
};

// A two-step agent loop: the model calls the tool, then answers its result.
const toolCalls = [];
const agent = streamText({
  model: provider(model),
  prompt: "What is the weather?",
  maxRetries: 0,
  stopWhen: stepCountIs(3),
  tools: {
    get_weather: tool({
      description: "The weather in a city.",
      inputSchema: jsonSchema({
        type: "object",
        properties: { city: { type: "string" } },
        required: ["city"],
        additionalProperties: false,
      }),
      execute: async ({ city }) => {
        toolCalls.push(city);
        return `Sunny in ${city}`;
      },
    }),
  },
});
results.aiTools = {
  text: await agent.text,
  steps: (await agent.steps).length,
  toolCalls,
  finishReason: await agent.finishReason,
};

// No retries: a retried failure would hide how the server answered the first time.
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 20_000 });

const plain = await client.responses.create({ model, input: "Hello from Node!" });
results.responses = {
  id: plain.id,
  status: plain.status,
  text: plain.output_text,
  inputTokens: plain.usage?.input_tokens ?? null,
  outputTokens: plain.usage?.output_tokens ?? null,
};

const stream = await client.responses.create({ model, input: "Hello from Node!", stream: true });
const types = [];
const sequence = [];
let text = "";
let completed = null;
for await (const event of stream) {
  types.push(event.type);
  sequence.push(event.sequence_number);
  if (event.type === "response.output_text.delta") text += event.delta;
  if (event.type === "response.completed") completed = event.response;
}
results.responsesStream = {
  text,
  types,
  sequence,
  // Stream events carry the raw response: no `output_text` helper field on it.
  completedText:
    completed?.output
      .filter((item) => item.type === "message")
      .flatMap((item) => item.content.map((part) => part.text))
      .join("") ?? null,
  completedUsage: completed?.usage ?? null,
};

console.log(JSON.stringify(results));
