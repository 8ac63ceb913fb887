// Opens each example file, and a multi-document file with errors in every document, in
// the real yaml-language-server (the server behind VS Code's and Neovim's YAML support)
// and checks what it reports: nothing for the examples, and each document's own error
// for the broken file, which proves the per-document modeline and the schema's rules
// reach an editor. Run by scripts/editor-check.sh.
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");
const path = require("path");
const rpc = require("vscode-languageserver-protocol/node");

const root = path.resolve(__dirname, "../..");
const server = spawn(path.join(__dirname, "node_modules/.bin/yaml-language-server"), ["--stdio"]);
const conn = rpc.createProtocolConnection(
  new rpc.StreamMessageReader(server.stdout),
  new rpc.StreamMessageWriter(server.stdin),
);
const diagnostics = new Map();
const waiters = new Map();
conn.onNotification(rpc.PublishDiagnosticsNotification.type, (p) => {
  diagnostics.set(p.uri, p.diagnostics);
  const w = waiters.get(p.uri);
  if (w) w(p.diagnostics);
});
conn.onRequest("workspace/configuration", (p) =>
  p.items.map(() => ({ validate: true, completion: true, schemaStore: { enable: false } })),
);
conn.listen();

function open(file, text) {
  const uri = "file://" + file;
  return new Promise((resolve) => {
    waiters.set(uri, resolve);
    conn.sendNotification(rpc.DidOpenTextDocumentNotification.type, {
      textDocument: { uri, languageId: "yaml", version: 1, text },
    });
    setTimeout(() => resolve(diagnostics.get(uri) || null), 15000);
  });
}

const MODELINE = "# yaml-language-server: $schema=../schema/calico-v1.schema.json";
const doc = (kind, spec) => [MODELINE, "apiVersion: calico/v1", `kind: ${kind}`, "metadata: {name: x}", `spec: ${spec}`, ""].join("\n");

// One bad document each, with the line (1-based) where the server must flag it: every
// one-resource rule the schema can express. Rules between resources (a Container's node
// must exist) are validate's alone and not in this table.
const BAD = [
  ["unknown field", doc("Group", "{bogus: 1}"), 5],
  ["unknown top-level field", doc("Group", "{}") + "extra: 1\n", 6],
  ["wrong apiVersion", doc("Group", "{}").replace("calico/v1\n", "calico/v2\n"), 2],
  ["unknown kind", doc("Gruop", "{}"), 3],
  ["bad name", doc("Group", "{}").replace("{name: x}", "{name: -bad-}"), 4],
  ["action not an enum value", doc("Policy", "{ingress: [{action: Accept}]}"), 5],
  ["unknown protocol", doc("Policy", "{ingress: [{action: Allow, protocol: tcpx}]}"), 5],
  ["port out of range", doc("Policy", "{ingress: [{action: Allow, protocol: TCP, destination: {ports: [70000]}}]}"), 5],
  ["port range not a range", doc("Policy", "{ingress: [{action: Allow, protocol: TCP, destination: {ports: [\"9:x\"]}}]}"), 5],
  ["more than 50 ports", doc("Policy", `{ingress: [{action: Allow, protocol: TCP, destination: {ports: [${Array.from({length: 51}, (_, i) => 1000 + i).join(", ")}]}}]}`), 5],
  ["ipVersion 5", doc("Policy", "{ingress: [{action: Allow, ipVersion: 5}]}"), 5],
  ["container and netns both", doc("Container", "{node: n, container: c, netns: /x}"), 5],
  ["neither container nor netns", doc("Container", "{node: n}"), 5],
  ["missing node", doc("Container", "{netns: /x}"), 5],
  ["IPv4 octet above 255", doc("Container", "{node: n, netns: /x, ips: [10.65.0.999]}"), 5],
  ["blockSize 40 in an IPv4 pool", doc("IPPool", "{cidr: 10.70.0.0/16, blockSize: 40}"), 5],
  ["blockSize 26 in an IPv6 pool", doc("IPPool", "{cidr: 'fd00:1::/48', blockSize: 26}"), 5],
  ["IPv4 prefix over 32", doc("IPPool", "{cidr: 10.70.0.0/33}"), 5],
  ["node ipv4 given an IPv6 address", doc("Node", "{ipv4: 'fd00::1/64'}"), 5],
  ["BGP peer node and nodeSelector", doc("BGPPeer", "{peerIP: 10.0.0.1, asNumber: 64600, node: n, nodeSelector: 'a == \"b\"'}"), 5],
  ["BGP peer address", doc("BGPPeer", "{peerIP: 10.0.0.256, asNumber: 64600}"), 5],
  ["mtu out of range", doc("ClusterConfig", "{mtu: 100}"), 5],
  ["interfacePrefix pattern", doc("ClusterConfig", "{interfacePrefix: Cali-}"), 5],
];

// One file of three documents, one error in each: each document's own modeline must
// bring the schema to it.
const broken = [
  doc("Group", "{bogus: 1}"),
  "---",
  doc("Container", "{node: host1, netns: /x, container: web, ips: [10.65.0.999]}"),
  "---",
  doc("IPPool", "{cidr: 10.70.0.0/16, blockSize: 40}"),
].join("\n");

(async () => {
  let failed = 0;
  await conn.sendRequest(rpc.InitializeRequest.type, {
    processId: process.pid,
    rootUri: "file://" + root,
    capabilities: { workspace: { configuration: true } },
  });
  conn.sendNotification(rpc.InitializedNotification.type, {});
  conn.sendNotification(rpc.DidChangeConfigurationNotification.type, {
    settings: { yaml: { validate: true, schemaStore: { enable: false } } },
  });
  const examples = path.join(root, "examples");
  for (const f of fs.readdirSync(examples).filter((f) => f.endsWith(".yaml")).sort()) {
    const file = path.join(examples, f);
    const d = await open(file, fs.readFileSync(file, "utf8"));
    if (d === null) { console.log(`FAIL examples/${f}: no diagnostics published`); failed++; continue; }
    const errs = d.filter((x) => x.severity === 1);
    console.log(`examples/${f}: ${errs.length} errors`);
    for (const e of errs) console.log(`  ${e.range.start.line + 1}: ${e.message}`);
    failed += errs.length;
  }
  for (const [i, [what, text, line]] of BAD.entries()) {
    const d = (await open(path.join(examples, `editor-check-bad-${i}.yaml`), text)) || [];
    const at = d.filter((x) => x.range.start.line + 1 === line);
    if (at.length === 0) {
      console.log(`FAIL ${what}: nothing on line ${line} (got ${JSON.stringify(d.map((x) => [x.range.start.line + 1, x.message]))})`);
      failed++;
    } else {
      console.log(`ok   ${what}: line ${line}: ${at[0].message.split("\n")[0].slice(0, 100)}`);
    }
  }
  const file = path.join(examples, "editor-check-broken.yaml"); // never written to disk
  const d = (await open(file, broken)) || [];
  const lines = d.map((x) => x.range.start.line + 1);
  console.log(`three documents: ${d.length} diagnostics`);
  for (const e of d) console.log(`  ${e.range.start.line + 1}: ${e.message.split("\n")[0].slice(0, 100)}`);
  // Each document's error is on its spec line.
  const specLines = broken.split("\n").flatMap((l, i) => (l.startsWith("spec:") ? [i + 1] : []));
  for (const [n, want] of specLines.entries()) {
    if (!lines.includes(want)) { console.log(`FAIL: nothing reported on line ${want} (document ${n + 1})`); failed++; }
  }
  server.kill();
  console.log(failed ? `editor check FAILED (${failed})` : "editor check passed");
  process.exit(failed ? 1 : 0);
})().catch((e) => { console.error(e); server.kill(); process.exit(1); });
