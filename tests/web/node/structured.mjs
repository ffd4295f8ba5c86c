// The Vercel `ai` package (with its OpenAI-compatible provider) against a triode server:
// generateObject with a zod schema, a forced tool call streamed and not, and a two-step tool
// round trip. Prints one JSON object for tests/web/test_ai_sdk.py to check.
// Usage: node structured.mjs http://127.0.0.1:PORT MODEL
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateObject, generateText, streamText, tool } from "ai";
import { z } from "zod";

const [baseUrl, modelId] = process.argv.slice(2);
const provider = createOpenAICompatible({
  name: "triode",
  baseURL: `${baseUrl}/v1`,
  apiKey: "unused",
  supportsStructuredOutputs: true, // response_format json_schema, not a prompt-only hint
});
const model = provider(modelId);
const common = { model, temperature: 0, maxRetries: 0 };
const stage = (name) => console.error(`${new Date().toISOString()} ${name}`);

const pet = await generateObject({
  ...common,
  schema: z.object({
    name: z.string().max(12),
    species: z.enum(["cat", "dog", "fish"]),
    legs: z.number().int().min(0).max(4),
  }),
  prompt: "Describe my pet as JSON.",
  maxOutputTokens: 60,
});

stage("generateObject done");

const weatherInput = z.object({
  city: z.string().max(20),
  unit: z.enum(["celsius", "fahrenheit"]),
});
const tools = {
  get_time: tool({
    description: "The current time in a time zone.",
    inputSchema: z.object({ zone: z.string().max(20) }),
  }),
  get_weather: tool({ description: "The current weather in a city.", inputSchema: weatherInput }),
};
const forced = {
  ...common,
  tools,
  toolChoice: { type: "tool", toolName: "get_weather" },
  prompt: "What is the weather like in Paris today?",
  maxOutputTokens: 40,
};
const whole = await generateText(forced);
stage("generateText (tool call) done");
const streamed = streamText(forced);
const streamedParts = [];
for await (const part of streamed.fullStream) streamedParts.push(part.type);
const streamedCalls = await streamed.toolCalls;
stage("streamText (tool call) done");

// Two steps: the SDK runs the tool, sends its result back as a `tool` message, and the model
// answers in text (tool choice "none" on the second step).
const roundTrip = await generateText({
  ...common,
  tools: {
    ...tools,
    get_weather: tool({
      ...tools.get_weather,
      execute: async () => ({ celsius: 21, sky: "clear" }),
    }),
  },
  toolChoice: { type: "tool", toolName: "get_weather" },
  prepareStep: ({ stepNumber }) => (stepNumber > 0 ? { toolChoice: "none" } : {}),
  stopWhen: ({ steps }) => steps.length >= 2,
  prompt: "What is the weather like in Paris today?",
  maxOutputTokens: 40,
});

stage("round trip done");

const calls = (list) => list.map((c) => ({ name: c.toolName, input: c.input }));
console.log(
  JSON.stringify({
    object: pet.object,
    objectFinish: pet.finishReason,
    calls: calls(whole.toolCalls),
    finish: whole.finishReason,
    streamedCalls: calls(streamedCalls),
    streamedFinish: await streamed.finishReason,
    streamedParts,
    steps: roundTrip.steps.map((s) => ({ calls: calls(s.toolCalls), text: s.text })),
  }),
);
// NOTE: exit at once: the provider's keep-alive sockets must not hold the test up.
process.exit(0);
