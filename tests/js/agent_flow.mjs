// The agent flow driven by the official MCP TypeScript SDK (a client tokenwarden did not write),
// over streamable HTTP with a session, ending each session with DELETE as the SDK does.
//
// Usage: node agent_flow.mjs URL ADMIN_TOKEN. Exits non-zero with a message on the first failure.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, adminToken] = process.argv.slice(2);

function check(condition, message) {
  if (!condition) {
    console.error(`FAIL: ${message}`);
    process.exit(1);
  }
}

async function connect(token) {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  const client = new Client({ name: "tokenwarden-ts-test", version: "1" });
  await client.connect(transport);
  return { client, transport };
}

async function call(client, name, args) {
  const result = await client.callTool({ name, arguments: args });
  return [Boolean(result.isError), result.structuredContent ?? {}];
}

async function toolNames(client) {
  return (await client.listTools()).tools.map((t) => t.name).sort();
}

const admin = await connect(adminToken);
check(admin.transport.sessionId, "the server gives the SDK a session");
const [failed, orchestrator] = await call(admin.client, "create_token", {
  name: "orchestrator",
  parent: "none",
  tools: ["create_token", "revoke_token", "whoami"],
  buckets: ["a"],
});
check(!failed, `create orchestrator: ${JSON.stringify(orchestrator)}`);

const agent = await connect(orchestrator.token);
const names = await toolNames(agent.client);
check(JSON.stringify(names) === JSON.stringify(["create_token", "revoke_token", "whoami"]), `orchestrator tools: ${names}`);
const [childFailed, child] = await call(agent.client, "create_token", { name: "sub", tools: ["whoami"] });
check(!childFailed && child.parent_id === orchestrator.id, `mint child: ${JSON.stringify(child)}`);
const [refused, escalation] = await call(agent.client, "create_token", { name: "x", buckets: ["b"] });
check(refused && escalation.error.code === "scope_exceeds_parent", `escalation: ${JSON.stringify(escalation)}`);

const sub = await connect(child.token);
check(JSON.stringify(await toolNames(sub.client)) === JSON.stringify(["whoami"]), "the child sees only whoami");
const [, revoked] = await call(agent.client, "revoke_token", { id: child.id });
check(revoked.revoked === true, `revoke child: ${JSON.stringify(revoked)}`);
let cutOff = false;
try {
  await call(sub.client, "whoami", {});
} catch (error) {
  cutOff = true;
  console.log(`revoked child refused: ${error.constructor.name}`);
}
check(cutOff, "a revoked child's next call is refused");

// Ending a session: the SDK sends DELETE and throws unless the answer is ok (or 405).
for (const { transport, client } of [agent, admin]) {
  await transport.terminateSession();
  await client.close();
}
console.log("typescript sdk agent flow: ok");
