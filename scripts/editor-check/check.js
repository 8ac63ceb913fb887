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
const broken = [
  MODELINE,
  "apiVersion: calico/v1",
  "kind: Group",
  "metadata: {name: g}",
  "spec: {bogus: 1}",
  "---",
  MODELINE,
  "apiVersion: calico/v1",
  "kind: Container",
  "metadata: {name: c}",
  "spec: {node: host1, netns: /x, container: web, ips: [10.65.0.999]}",
  "---",
  MODELINE,
  "apiVersion: calico/v1",
  "kind: IPPool",
  "metadata: {name: p}",
  "spec: {cidr: 10.70.0.0/16, blockSize: 40}",
  "",
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
  const file = path.join(examples, "editor-check-broken.yaml"); // never written to disk
  const d = (await open(file, broken)) || [];
  const lines = d.map((x) => x.range.start.line + 1);
  console.log(`broken file: ${d.length} diagnostics`);
  for (const e of d) console.log(`  ${e.range.start.line + 1}: ${e.message.split("\n")[0]}`);
  // One document each: line 5 (unknown field), line 11 (both / bad IP), line 17 (blockSize).
  for (const [want, what] of [[5, "unknown field in document 1"], [11, "container and netns, bad IP in document 2"], [17, "blockSize 40 in document 3"]]) {
    if (!lines.includes(want)) { console.log(`FAIL: nothing reported on line ${want} (${what})`); failed++; }
  }
  server.kill();
  console.log(failed ? `editor check FAILED (${failed})` : "editor check passed");
  process.exit(failed ? 1 : 0);
})().catch((e) => { console.error(e); server.kill(); process.exit(1); });
